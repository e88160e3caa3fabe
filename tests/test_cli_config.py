"""The command line and the configuration as a sysadmin meets them: the shipped example, check-config's
errors, environment overrides, classify's JSON contract."""

from __future__ import annotations

import json
import mailbox
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gatewayd.configdoc import render
from gatewayd.settings import ConfigError, load_settings

ROOT = Path(__file__).resolve().parent.parent


def gatewayd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gatewayd", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
    )


def test_shipped_example_is_generated_from_the_schema_and_loads() -> None:
    example = ROOT / "config" / "gatewayd.toml"
    assert example.read_text() == render(), "config/gatewayd.toml is stale: run `gatewayd example-config`"
    settings = load_settings(example)
    assert settings.smtp.listen == ["127.0.0.1:2525"]
    assert settings.storage.url.startswith("sqlite+aiosqlite:///")
    assert gatewayd("check-config", "-c", str(example)).returncode == 0


def test_every_option_is_documented_in_the_example() -> None:
    text = render()
    for section in (
        "[smtp]",
        "[smtp.upstream]",
        "[spool]",
        "[http]",
        "[storage]",
        "[tls]",
        "[policy]",
        "[analysis]",
        "[imap]",
        "[imap.upstream]",
        "[logging]",
    ):
        assert section in text
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if " = " in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"undocumented option: {line}"


def test_check_config_reports_every_error_with_its_dotted_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[smtp]\nlisten = ["nonsense"]\n[smtp.upstream]\nport = 70000\ntls = "sometimes"\n'
        '[spool]\nmax_age = "forever"\n[storage]\nurl = "mysql://x"\n[nosuch]\nx = 1\n'
    )
    out = gatewayd("check-config", "-c", str(bad))
    assert out.returncode == 1
    for path in (
        "smtp.listen",
        "smtp.upstream.port",
        "smtp.upstream.tls",
        "spool.max_age",
        "storage.url",
        "nosuch",
    ):
        assert f"config error: {path}" in out.stderr, (path, out.stderr)


def test_check_config_reports_unreadable_files_and_bad_toml(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[smtp\n")
    assert "not valid TOML" in gatewayd("check-config", "-c", str(broken)).stderr
    assert "no such file" in gatewayd("check-config", "-c", str(tmp_path / "missing.toml")).stderr
    certless = tmp_path / "certless.toml"
    certless.write_text('[tls]\ncert = "/nonexistent/cert.pem"\nkey = "/nonexistent/key.pem"\n')
    out = gatewayd("check-config", "-c", str(certless))
    assert out.returncode == 1 and "tls.cert: cannot read" in out.stderr


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "g.toml"
    conf.write_text('[smtp.upstream]\nport = 25\n[spool]\nmax_age = "2d"\n')
    monkeypatch.setenv("GATEWAYD_SMTP__UPSTREAM__PORT", "2525")
    settings = load_settings(conf)
    assert settings.smtp.upstream.port == 2525
    assert settings.spool.max_age == 2 * 86400
    monkeypatch.setenv("GATEWAYD_SMTP__UPSTREAM__PORT", "not-a-port")
    with pytest.raises(ConfigError) as err:
        load_settings(conf)
    assert any(p.startswith("smtp.upstream.port") for p in err.value.problems)


MESSAGES = {
    "newsletter.eml": b"From: News <news@shop.example>\r\nTo: alice@mail.test\r\n"
    b"Subject: Our weekly deals\r\n"
    b"List-Unsubscribe: <https://shop.example/unsub>\r\nList-Id: deals.shop.example\r\n"
    b"Message-ID: <n1@shop.example>\r\nDate: Wed, 18 Nov 2026 10:00:00 +0000\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><h1>Deals</h1>"
    b"<p>Save 20% on everything this week.</p></body></html>\r\n",
    "personal.eml": b"From: Bob <bob@mail.test>\r\nTo: alice@mail.test\r\nSubject: lunch\r\n"
    b"Message-ID: <p1@mail.test>\r\nDate: Wed, 18 Nov 2026 10:00:00 +0000\r\n\r\n"
    b"Hi Alice,\r\n\r\nCould you send me the slides by Friday?\r\n\r\nThanks, Bob\r\n",
}


def test_classify_json_contract_over_files_folders_and_mbox(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    for name, raw in MESSAGES.items():
        (folder / name).write_bytes(raw)
    box = mailbox.mbox(tmp_path / "box.mbox")
    for raw in MESSAGES.values():
        box.add(raw)
    box.close()
    out = gatewayd("classify", "--json", str(folder), str(tmp_path / "box.mbox"))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert len(rows) == 4
    for row in rows:
        assert set(row) >= {
            "path",
            "message_id",
            "spam",
            "phishing",
            "category",
            "priority",
            "summary",
            "actions",
            "stage",
            "elapsed_ms",
        }
        assert set(row["spam"]) == {"score", "verdict"} and set(row["priority"]) == {"important", "score"}
        assert set(row["category"]["scores"]) == {
            "personal",
            "newsletter",
            "notification",
            "transactional",
            "social",
        }
    by_id = {r["message_id"]: r for r in rows}
    assert by_id["n1@shop.example"]["category"]["label"] == "newsletter"
    assert by_id["p1@mail.test"]["category"]["label"] == "personal"
    assert any(a["due"] == "2026-11-20" for a in by_id["p1@mail.test"]["actions"])
    assert sum(r["path"].endswith(("#0", "#1")) for r in rows) == 2


def test_classify_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    out = gatewayd("classify", str(tmp_path / "nope.eml"))
    assert out.returncode == 1 and "nope.eml" in out.stderr


def test_help_and_version() -> None:
    out = gatewayd("--help")
    assert out.returncode == 0
    for cmd in ("run", "check-config", "queue", "classify"):
        assert cmd in out.stdout
    assert "gatewayd 0.1.0" in gatewayd("--version").stdout
    assert "release ID" in gatewayd("queue", "--help").stdout
