"""Train the fast stage (hashed n-grams + header facts -> linear heads) and export it as models/fast.onnx.

Training time only (scikit-learn, scipy, onnx: models/requirements-export.txt); run prepare_data.py first.
Usage: python models/train_fast.py [--data /tmp/corpora/prepared.pkl] [--out models]

Validation records are split in two by position: "calib" sets thresholds (decision thresholds are baked into
the biases so that 0.5 is the operating point; cascade bands go to models/manifest.json), "test" is reported.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import scipy.sparse as sp
from onnx import TensorProto, helper, numpy_helper
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.analysis.facts import CATEGORIES
from gatewayd.intel import features as F

HEADS = ["spam", "phishing", "priority", *[f"category:{c}" for c in CATEGORIES]]


def featurize_all(records: list[dict]) -> sp.csr_matrix:
    rows, cols, vals = [], [], []
    for i, r in enumerate(records):
        idx, val = F.featurize(r["facts"])
        rows.append(np.full(idx.size, i, np.int64))
        cols.append(idx)
        vals.append(val)
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(records), F.DIM),
        dtype=np.float32,
    )


def logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))


def best_f1_threshold(p: np.ndarray, y: np.ndarray) -> float:
    best, thr = -1.0, 0.5
    for t in np.linspace(0.05, 0.95, 91):
        pred = p >= t
        tp = (pred & y).sum()
        f1 = 2 * tp / max(pred.sum() + y.sum(), 1)
        if f1 > best:
            best, thr = f1, float(t)
    return thr


def fp_threshold(p: np.ndarray, y: np.ndarray, neg: np.ndarray, max_fp: float) -> float:
    """Lowest threshold whose false-positive rate on ``neg`` stays under ``max_fp``."""
    for t in np.linspace(0.01, 0.99, 99):
        if ((p >= t) & neg).sum() <= max_fp * neg.sum():
            return float(t)
    return 0.99


def band(p: np.ndarray, y: np.ndarray, max_err: float) -> tuple[float, float]:
    """(lo, hi): below lo at most max_err are positive, above hi at most max_err are negative (as shares)."""
    lo, hi = 0.0, 1.0
    for t in np.linspace(0.01, 0.5, 50):
        sel = p < t
        if sel.sum() and y[sel].mean() <= max_err:
            lo = float(t)
    for t in np.linspace(0.99, 0.5, 50):
        sel = p >= t
        if sel.sum() and (1 - y[sel].mean()) <= max_err:
            hi = float(t)
    return lo, hi


def export(w: np.ndarray, b: np.ndarray, path: Path) -> None:
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, ["batch", "k"])
    val = helper.make_tensor_value_info("val", TensorProto.FLOAT, ["batch", "k"])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]])
    nodes = [
        helper.make_node("Gather", ["W", "idx"], ["g"], axis=0),
        helper.make_node("Unsqueeze", ["val", "ax2"], ["v3"]),
        helper.make_node("Mul", ["g", "v3"], ["m"]),
        helper.make_node("ReduceSum", ["m", "ax1"], ["s"], keepdims=0),
        helper.make_node("Add", ["s", "b"], ["logits"]),
    ]
    inits = [
        numpy_helper.from_array(w.astype(np.float32), "W"),
        numpy_helper.from_array(b.astype(np.float32), "b"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([1], np.int64), "ax1"),
    ]
    graph = helper.make_graph(nodes, "gatewayd_fast", [idx, val], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="gatewayd")
    model.ir_version = 8
    model.metadata_props.add(key="heads", value=json.dumps(HEADS))
    model.metadata_props.add(key="features_version", value=str(F.VERSION))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="/tmp/corpora/prepared.pkl")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args()
    out = Path(args.out)
    with open(args.data, "rb") as fh:
        records = pickle.load(fh)
    t0 = time.perf_counter()
    X = featurize_all(records)
    print(f"featurised {len(records)} in {time.perf_counter() - t0:.1f}s, nnz/row {X.nnz / len(records):.0f}")
    split = np.array([r["split"] for r in records])
    train = split == "train"
    val_pos = np.cumsum(split == "val")
    calib = (split == "val") & (val_pos % 2 == 0)
    spam = np.array([r["spam"] for r in records])
    phish = np.array([r["phishing"] for r in records])
    important = np.array([bool(r["important"]) for r in records])
    cat = np.array([r["category"] or "" for r in records])
    ham = ~spam

    W = np.zeros((F.DIM, len(HEADS)), np.float32)
    B = np.zeros(len(HEADS), np.float32)
    content_cols = F.LIST_START  # spam and phishing never see list/bulk header facts
    Xc = X[:, :content_cols].tocsr()
    manifest: dict = {"features_version": F.VERSION, "heads": HEADS, "fast": {}}

    def fit_binary(
        col: int, name: str, Xh: sp.csr_matrix, y: np.ndarray, rows: np.ndarray, C: float, weight: str | None
    ) -> np.ndarray:
        t = time.perf_counter()
        clf = LogisticRegression(C=C, solver="liblinear", class_weight=weight, max_iter=200)
        clf.fit(Xh[rows & train], y[rows & train])
        W[: Xh.shape[1], col] = clf.coef_[0]
        B[col] = clf.intercept_[0]
        print(f"{name}: fit {time.perf_counter() - t:.1f}s")
        return clf.predict_proba(Xh)[:, 1]

    all_rows = np.ones(len(records), bool)
    p_spam = fit_binary(0, "spam", Xc, spam, all_rows, 8.0, None)
    thr = best_f1_threshold(p_spam[calib], spam[calib])
    B[0] -= logit(thr)
    p_spam = 1 / (1 + np.exp(-(np.log(p_spam / (1 - p_spam + 1e-12) + 1e-12) - logit(thr))))
    p_phish = fit_binary(1, "phishing", Xc, phish, all_rows, 8.0, "balanced")
    thr = fp_threshold(p_phish[calib], phish[calib], ham[calib], 0.007)
    B[1] -= logit(thr)
    p_phish = 1 / (1 + np.exp(-(np.log(p_phish / (1 - p_phish + 1e-12) + 1e-12) - logit(thr))))
    p_prio = fit_binary(2, "priority", X, important, ham, 2.0, "balanced")
    thr = best_f1_threshold(p_prio[calib & ham], important[calib & ham])
    B[2] -= logit(thr)
    p_prio = 1 / (1 + np.exp(-(np.log(p_prio / (1 - p_prio + 1e-12) + 1e-12) - logit(thr))))

    t = time.perf_counter()
    cat_rows = ham & (cat != "") & train
    clf = LogisticRegression(C=4.0, max_iter=300, class_weight="balanced")
    clf.fit(X[cat_rows], cat[cat_rows])
    order = [list(clf.classes_).index(c) for c in CATEGORIES]
    W[:, 3:] = clf.coef_[order].T
    B[3:] = clf.intercept_[order]
    p_cat = clf.predict_proba(X)[:, order]
    print(f"category: fit {time.perf_counter() - t:.1f}s")

    lo, hi = band(p_spam[calib], spam[calib], 0.005)
    plo, phi = band(p_phish[calib], phish[calib], 0.01)
    conf = p_cat.max(1)
    cat_ok = np.array(CATEGORIES)[p_cat.argmax(1)] == cat
    cat_thr = 0.99
    for t in np.linspace(0.3, 0.99, 70):
        sel = calib & ham & (conf >= t)
        if sel.sum() and cat_ok[sel].mean() >= 0.95:
            cat_thr = float(t)
            break
    manifest["fast"] = {"spam_band": [lo, hi], "phishing_band": [plo, phi], "category_confident": cat_thr}
    export(W, B, out / "fast.onnx")
    mpath = out / "manifest.json"
    if mpath.exists():
        old = json.loads(mpath.read_text())
        old.update({k: v for k, v in manifest.items()})
        manifest = old
    mpath.write_text(json.dumps(manifest, indent=2) + "\n")
    test = (split == "val") & ~calib
    for name, p, y, rows in (
        ("spam", p_spam, spam, test),
        ("phishing", p_phish, phish, test),
        ("priority", p_prio, important, test & ham),
    ):
        pred = p[rows] >= 0.5
        yy = y[rows]
        tp = (pred & yy).sum()
        prec = tp / max(pred.sum(), 1)
        rec = tp / max(yy.sum(), 1)
        print(
            f"{name}: P {prec:.3f} R {rec:.3f} F1 {2 * prec * rec / max(prec + rec, 1e-9):.3f} n={rows.sum()}"
        )
    print("phishing FP rate on ham:", ((p_phish >= 0.5) & test & ham).sum() / (test & ham).sum())
    rows = test & ham & (cat != "")
    print("category accuracy:", cat_ok[rows].mean())
    sure = (p_spam < lo) | (p_spam >= hi)
    sure &= (p_phish < plo) | (p_phish >= phi)
    print("manifest:", manifest["fast"], "fast-stage share (test):", sure[test].mean())


if __name__ == "__main__":
    main()
