# ruff: noqa: RUF001  (full-width punctuation in the Japanese samples is intended)
"""Tests of spoofed-header stripping and verdict header annotation: tables plus property-based fuzzing."""

from __future__ import annotations

import datetime as dt
import email
import email.header
import email.policy
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.analysis.facts import ActionItem, Verdict
from gatewayd.annotate import annotate, strip_spoofed, verdict_headers

KW = {"spam_threshold": 0.5, "phishing_threshold": 0.5, "hostname": "mx1.example.org"}


def verdict(summary: str = "The deploy went fine.", **kw: object) -> Verdict:
    base: dict[str, object] = {
        "spam_score": 0.9734, "phishing_score": 0.12, "category": "newsletter",
        "category_scores": {"newsletter": 1.0}, "important": False, "priority_score": 0.05,
        "summary": summary, "reasons": ("SUBJ_ALL_CAPS", "SPAM_WORDS"),
    }
    base.update(kw)
    return Verdict(**base)  # type: ignore[arg-type]


def decode(value: str) -> str:
    return str(email.header.make_header(email.header.decode_header(value)))


STRIP_CASES = [
    ("crlf single", b"From: a@b\r\nX-Spam-Flag: YES\r\nSubject: s\r\n\r\nbody\r\n",
     b"From: a@b\r\nSubject: s\r\n\r\nbody\r\n", 1),
    ("lf only", b"From: a@b\nX-Gatewayd-Category: personal\nSubject: s\n\nbody\n",
     b"From: a@b\nSubject: s\n\nbody\n", 1),
    ("folded", b"X-Spam-Status: Yes, score=9\r\n\ttests=A,B\r\n  C\r\nFrom: a@b\r\n\r\nb",
     b"From: a@b\r\n\r\nb", 1),
    ("case insensitive", b"x-sPaM-score: 1\r\nX-GATEWAYD-ID: 7\r\nTo: c@d\r\n\r\n", b"To: c@d\r\n\r\n", 2),
    ("space before colon", b"X-Spam-Flag : YES\r\nTo: c@d\r\n\r\n", b"To: c@d\r\n\r\n", 1),
    ("no body, no blank line", b"From: a@b\r\nX-Spam-Flag: YES\r\n", b"From: a@b\r\n", 1),
    ("no trailing newline", b"From: a@b\r\nX-Spam-Flag: YES", b"From: a@b\r\n", 1),
    ("body untouched", b"From: a@b\r\n\r\nX-Spam-Flag: YES\r\nX-Gatewayd-Id: 1\r\n",
     b"From: a@b\r\n\r\nX-Spam-Flag: YES\r\nX-Gatewayd-Id: 1\r\n", 0),
    ("lf body untouched", b"From: a@b\n\nX-Spam-Flag: YES\n", b"From: a@b\n\nX-Spam-Flag: YES\n", 0),
    ("similar names kept", b"X-Spamassassin: x\r\nX-Gatewayd: y\r\nX-Spam: z\r\n\r\n",
     b"X-Spamassassin: x\r\nX-Gatewayd: y\r\nX-Spam: z\r\n\r\n", 0),
    ("continuation of kept header", b"Subject: a\r\n b\r\nX-Spam-Flag: YES\r\n c\r\n\r\nx",
     b"Subject: a\r\n b\r\n\r\nx", 1),
    ("empty", b"", b"", 0),
    ("starts with blank line", b"\r\nX-Spam-Flag: YES\r\n", b"\r\nX-Spam-Flag: YES\r\n", 0),
]


@pytest.mark.parametrize(("name", "raw", "expected", "count"), STRIP_CASES, ids=[c[0] for c in STRIP_CASES])
def test_strip_spoofed(name: str, raw: bytes, expected: bytes, count: int) -> None:
    assert strip_spoofed(raw) == (expected, count)


def test_verdict_headers_order_and_values() -> None:
    block = verdict_headers(verdict(actions=(ActionItem("Send the report", dt.date(2026, 11, 20)),)),
                            "gw-42", **KW)  # type: ignore[arg-type]
    text = block.decode("ascii")
    assert text.endswith("\r\n")
    assert "\n" not in text.replace("\r\n", "")
    names = [line.split(":", 1)[0] for line in text.split("\r\n") if line and not line[0].isspace()]
    assert names == ["X-Gatewayd-Id", "X-Spam-Flag", "X-Spam-Score", "X-Spam-Status",
                     "X-Spam-Checker-Version", "X-Gatewayd-Phishing", "X-Gatewayd-Category",
                     "X-Gatewayd-Priority", "X-Gatewayd-Summary", "X-Gatewayd-Actions"]
    msg = email.message_from_bytes(block + b"\r\nbody", policy=email.policy.compat32)
    assert msg["X-Gatewayd-Id"] == "gw-42"
    assert msg["X-Spam-Flag"] == "YES"
    assert msg["X-Spam-Score"] == "0.973"
    assert msg["X-Spam-Status"].startswith("Yes, score=0.973 required=0.500 tests=SUBJ_ALL_CAPS,SPAM_WORDS")
    assert msg["X-Gatewayd-Phishing"] == "NO score=0.120"
    assert msg["X-Gatewayd-Category"] == "newsletter"
    assert msg["X-Gatewayd-Priority"] == "normal score=0.050"
    assert decode(msg["X-Gatewayd-Summary"]) == "The deploy went fine."
    assert decode(msg["X-Gatewayd-Actions"]) == "Send the report (due 2026-11-20)"


def test_no_actions_header_without_actions() -> None:
    block = verdict_headers(verdict(spam_score=0.1, important=True, priority_score=0.8), "1", **KW)  # type: ignore[arg-type]
    assert b"X-Gatewayd-Actions" not in block
    assert b"X-Spam-Flag: NO\r\n" in block
    assert b"X-Gatewayd-Priority: high score=0.800\r\n" in block


def test_many_reasons_fold_under_78_chars() -> None:
    reasons = tuple(f"RULE_NUMBER_{i}_WITH_A_LONG_NAME" for i in range(40))
    block = verdict_headers(verdict(reasons=reasons), "1", **KW)  # type: ignore[arg-type]
    assert all(len(line) <= 78 for line in block.split(b"\r\n"))
    status = email.message_from_bytes(block + b"\r\n")["X-Spam-Status"]
    tests = "".join(status.split()).split("tests=", 1)[1]
    assert tests.split(",") == list(reasons)


@pytest.mark.parametrize("summary", [
    "Short summary.",
    "Grüße aus München: das Treffen ist verschoben. " * 6,
    "明日の会議は午後3時からです。資料を準備してください！" * 8,
    "x" * 300,
    "emoji 🎉 and = signs ?= and =?utf-8?q?fake?= words",
])
def test_summary_encoded_folded_and_round_trips(summary: str) -> None:
    block = verdict_headers(verdict(summary), "1", **KW)  # type: ignore[arg-type]
    for line in block.split(b"\r\n"):
        assert len(line) <= 78, line
    msg = email.message_from_bytes(block + b"\r\n", policy=email.policy.compat32)
    assert decode(msg["X-Gatewayd-Summary"]) == summary.strip()


@pytest.mark.parametrize("summary", [
    "hello\r\nBcc: victim@example.org",
    "hello\nBcc: victim@example.org\n\nbody",
    "hello\rBcc: x",
    "a\x00b\x0bc\u2028Bcc: y",
])
def test_header_injection_yields_no_new_header(summary: str) -> None:
    raw = b"From: a@b\r\nSubject: s\r\n\r\nbody\r\n"
    out = annotate(raw, verdict(summary, reasons=("A\r\nBcc: z",), category="x\r\nBcc: q"), "id\r\nBcc: w",
                   **KW)  # type: ignore[arg-type]
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    assert msg.get_all("Bcc") is None
    assert msg.get_payload() == "body\r\n"
    for line in out.split(b"\r\n")[:-3]:
        assert b"\r" not in line and b"\n" not in line and b"\x00" not in line


def test_annotate_prepends_and_strips() -> None:
    raw = (b"X-Spam-Flag: NO\r\nFrom: a@b\r\nX-Gatewayd-Priority: high\r\n\tscore=1\r\nSubject: hi\r\n\r\n"
           b"X-Spam-Flag: NO in the body stays\r\n")
    out = annotate(raw, verdict(), "42", **KW)  # type: ignore[arg-type]
    block = verdict_headers(verdict(), "42", **KW)  # type: ignore[arg-type]
    assert out == block + b"From: a@b\r\nSubject: hi\r\n\r\nX-Spam-Flag: NO in the body stays\r\n"
    msg = email.message_from_bytes(out)
    assert msg.get_all("X-Spam-Flag") == ["YES"]
    assert msg.get_all("X-Gatewayd-Priority") == ["normal score=0.050"]


def test_annotate_lf_message_gets_lf_block() -> None:
    raw = b"From: a@b\nSubject: hi\n\nbody\n"
    out = annotate(raw, verdict(), "42", **KW)  # type: ignore[arg-type]
    assert b"\r" not in out
    assert out.endswith(raw)
    assert decode(email.message_from_bytes(out)["X-Gatewayd-Summary"]) == "The deploy went fine."


# --- property-based ----------------------------------------------------------------------------------
_names = st.sampled_from(["From", "To", "Subject", "X-Spam-Flag", "x-spam-status", "X-Gatewayd-Id",
                          "X-GATEWAYD-Summary", "Received", "DKIM-Signature", "X-Spamd", "X-Mailer"])
_value = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40).map(lambda s: s.encode())
_field = st.tuples(_names, _value, st.lists(_value, max_size=2))
_body = st.binary(max_size=200)


def _message(fields: list[tuple[str, bytes, list[bytes]]], body: bytes, eol: bytes, has_body: bool) -> bytes:
    head = b"".join(n.encode() + b": " + v + eol + b"".join(b"\t" + c + eol for c in conts)
                    for n, v, conts in fields)
    return head + (eol + body if has_body else b"")


@settings(max_examples=300, deadline=None)
@given(st.lists(_field, max_size=8), _body, st.sampled_from([b"\r\n", b"\n"]), st.booleans())
def test_strip_spoofed_properties(fields: list[tuple[str, bytes, list[bytes]]], body: bytes, eol: bytes,
                                  has_body: bool) -> None:
    raw = _message(fields, body, eol, has_body)
    out, removed = strip_spoofed(raw)
    spoofed = [f for f in fields if f[0].lower().startswith(("x-spam-", "x-gatewayd-"))]
    kept = [f for f in fields if f not in spoofed or not f[0].lower().startswith(("x-spam-", "x-gatewayd-"))]
    assert removed == len(spoofed)
    assert out == _message(kept, body, eol, has_body)
    if has_body:
        assert out.endswith(eol + body)
    assert strip_spoofed(out) == (out, 0)


def _body_of(raw: bytes) -> bytes:
    """Reference split: the body starts at the first line that is empty (LF or CRLF)."""
    pos = 0
    for line in raw.splitlines(keepends=True):
        if line in (b"\n", b"\r\n") and (pos == 0 or raw[pos - 1:pos] == b"\n"):
            return raw[pos:]
        pos += len(line)
    return b""


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.binary(max_size=30), _names.map(lambda n: n.encode() + b": v"),
                          st.sampled_from([b"\r\n", b"\n", b"\t", b" ", b":", b"\r"])), max_size=30))
def test_strip_spoofed_never_touches_the_body_of_any_bytes(chunks: list[bytes]) -> None:
    raw = b"".join(chunks)
    out, removed = strip_spoofed(raw)
    body = _body_of(raw)
    assert out.endswith(body)
    assert len(out) <= len(raw)
    assert (removed == 0) == (out == raw)
    assert strip_spoofed(out)[1] == 0


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=400))
def test_any_summary_round_trips_without_injection(summary: str) -> None:
    raw = b"From: a@b\r\nSubject: s\r\n\r\nbody\r\n"
    out = annotate(raw, verdict(summary), "1", **KW)  # type: ignore[arg-type]
    msg = email.message_from_bytes(out, policy=email.policy.compat32)
    addressing = [k for k in msg.keys() if k.lower() in {"from", "subject", "bcc", "to", "cc"}]
    assert addressing == ["From", "Subject"]
    assert msg.get_payload() == "body\r\n"
    expected = " ".join(re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", " ", summary).split())
    got = decode(msg["X-Gatewayd-Summary"]) if msg["X-Gatewayd-Summary"] is not None else ""
    assert " ".join(got.split()) == expected
    for line in out.split(b"\r\n"):
        assert len(line) <= 78 or not line.startswith((b"X-", b" ", b"\t"))
