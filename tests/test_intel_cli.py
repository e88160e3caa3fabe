"""The CLI with the models on: ``gatewayd classify --json`` answers from the cascade, and check-config names
a missing or corrupt model file."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from gatewayd import intel

ROOT = Path(__file__).resolve().parent.parent
MODELS_ENV = {"GATEWAYD_ANALYSIS__CLASSIFIER": "models"}

MAIL = {
    "order.eml": b"From: Shop <no-reply@shop.example>\r\nTo: al@mail.test\r\n"
    b"Subject: Your order #4411 has shipped\r\n"
    b"Message-ID: <o1@shop.example>\r\nDate: Tue, 17 Nov 2026 10:00:00 +0000\r\n\r\n"
    b"Your order has shipped and will arrive on Thursday.\r\n",
    "ask.eml": b"From: Bob <bob@mail.test>\r\nTo: al@mail.test\r\nSubject: slides\r\n"
    b"Message-ID: <a1@mail.test>\r\nDate: Tue, 17 Nov 2026 10:00:00 +0000\r\n\r\n"
    b"Hi Al,\r\n\r\nCould you send me the slides by Friday?\r\n\r\nBob\r\n",
}


def gatewayd(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **env},
    )


def test_classify_json_with_models(tmp_path: Path) -> None:
    for name, raw in MAIL.items():
        (tmp_path / name).write_bytes(raw)
    out = gatewayd("classify", "--json", str(tmp_path), env=MODELS_ENV)
    assert out.returncode == 0, out.stderr
    rows = {r["message_id"]: r for r in map(json.loads, out.stdout.splitlines())}
    assert set(rows) == {"o1@shop.example", "a1@mail.test"}
    for row in rows.values():
        assert row["stage"] in ("fast", "encoder")
        assert 0 <= row["spam"]["score"] <= 1 and row["summary"]
    assert rows["o1@shop.example"]["category"]["label"] == "transactional"
    assert rows["a1@mail.test"]["category"]["label"] == "personal"
    assert [a["due"] for a in rows["a1@mail.test"]["actions"]] == ["2026-11-20"]


def test_check_config_names_a_bad_model_file(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name in intel.FILES:
        shutil.copy(intel.BUNDLED / name, models / name)
    (models / "fast.onnx").write_bytes(b"not a model")
    env = {**MODELS_ENV, "GATEWAYD_ANALYSIS__MODELS_DIR": str(models)}
    out = gatewayd("check-config", env=env)
    assert out.returncode != 0
    assert str(models / "fast.onnx") in out.stdout + out.stderr
