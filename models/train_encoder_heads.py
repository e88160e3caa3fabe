"""Train the encoder-stage heads (logistic regression on MiniLM embeddings) -> models/encoder_heads.npz.

Training time only (scikit-learn). Needs models/encoder.int8.onnx, models/fast.onnx and the prepared corpus.
Usage: python models/train_encoder_heads.py [--data /tmp/corpora/prepared.pkl] [--train 5000]

Training rows: every message the fast stage is unsure about plus a random sample (the encoder only ever sees
the unsure ones, but a head trained on those alone is starved of clear examples). Embeddings are cached in
/tmp/corpora/embeddings.npz so models/evaluate can reuse them.
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gatewayd.analysis.facts import CATEGORIES
from gatewayd.intel import features as F
from gatewayd.intel.engine import Models

MODELS = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default="/tmp/corpora/prepared.pkl")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--cache", default="/tmp/corpora/embeddings.npz")
    args = ap.parse_args()
    with open(args.data, "rb") as fh:
        records = pickle.load(fh)
    models = Models.load(MODELS, threads=2, need_heads=False)
    split = np.array([r["split"] for r in records])
    t0 = time.perf_counter()
    fast = np.concatenate(
        [
            models.fast_probs([F.featurize(r["facts"]) for r in records[i : i + 256]])
            for i in range(0, len(records), 256)
        ]
    )
    print(f"fast stage over {len(records)}: {time.perf_counter() - t0:.1f}s")
    unsure = ~models.fast_sure(fast)
    rng = np.random.default_rng(7)
    train_idx = np.flatnonzero(split == "train")
    chosen = set(train_idx[unsure[train_idx]].tolist())
    rest = [i for i in rng.permutation(train_idx).tolist() if i not in chosen]
    chosen.update(rest[: max(0, args.train - len(chosen))])
    rows = sorted(chosen) + np.flatnonzero(split == "val").tolist()
    print(f"embedding {len(rows)} messages ({unsure[train_idx].sum()} unsure in train)")
    t0 = time.perf_counter()
    emb = np.zeros((len(records), 384), np.float32)
    texts = [F.encoder_text(records[i]["facts"]) for i in rows]
    for j in range(0, len(rows), 32):
        emb[rows[j : j + 32]] = models.embed(texts[j : j + 32])
    print(f"embedded in {time.perf_counter() - t0:.1f}s")
    have = np.zeros(len(records), bool)
    have[rows] = True
    np.savez_compressed(args.cache, emb=emb, have=have)
    train = have & (split == "train")
    spam = np.array([r["spam"] for r in records])
    phish = np.array([r["phishing"] for r in records])
    important = np.array([bool(r["important"]) for r in records])
    cat = np.array([r["category"] or "" for r in records])
    W = np.zeros((384, 3 + len(CATEGORIES)), np.float32)
    B = np.zeros(3 + len(CATEGORIES), np.float32)
    for col, y, sel, weight in (
        (0, spam, train, None),
        (1, phish, train, "balanced"),
        (2, important, train & ~spam, "balanced"),
    ):
        clf = LogisticRegression(C=4.0, max_iter=1000, class_weight=weight).fit(emb[sel], y[sel])
        W[:, col] = clf.coef_[0]
        B[col] = clf.intercept_[0]
    sel = train & ~spam & (cat != "")
    clf = LogisticRegression(C=4.0, max_iter=1000, class_weight="balanced").fit(emb[sel], cat[sel])
    order = [list(clf.classes_).index(c) for c in CATEGORIES]
    W[:, 3:] = clf.coef_[order].T
    B[3:] = clf.intercept_[order]
    # How much the encoder heads count against the fast stage for unsure mail: best F1 on the calib half.
    val_pos = np.cumsum(split == "val")
    calib = (split == "val") & (val_pos % 2 == 0) & unsure
    enc = 1 / (1 + np.exp(-(emb @ W + B)))
    manifest = json.loads((MODELS / "manifest.json").read_text())
    mix = [0.5] * W.shape[1]
    for col, y in ((0, spam), (1, phish)):
        best = -1.0
        for w in (0.25, 0.5, 0.75, 1.0):
            pred = ((1 - w) * fast[:, col] + w * enc[:, col]) >= 0.5
            tp = (pred & y)[calib].sum()
            f1 = 2 * tp / max(pred[calib].sum() + y[calib].sum(), 1)
            if f1 > best:
                best, mix[col] = f1, w
    manifest["encoder_mix"] = mix
    (MODELS / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print("encoder_mix", mix)
    np.savez(
        MODELS / "encoder_heads.npz",
        W=W,
        b=B,
        heads=np.array(json.loads((MODELS / "manifest.json").read_text())["heads"]),
    )
    print("wrote", MODELS / "encoder_heads.npz")


if __name__ == "__main__":
    main()
