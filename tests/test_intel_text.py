"""Summaries and action items from the text a user reads: HTML, quoted replies, signatures, languages."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.analysis.rules import RulesClassifier
from gatewayd.intel import features as F
from gatewayd.intel import summary as S
from gatewayd.intel.classifier import ModelClassifier
from gatewayd.intel.engine import Models
from gatewayd.mime import extract_facts

MODELS = Path(__file__).resolve().parents[1] / "models"

HTML_ONLY = (
    b"From: Team <team@example.com>\r\nTo: bob@example.org\r\nSubject: Launch plan\r\n"
    b"Date: Mon, 2 Mar 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n\r\n"
    b"<html><body><h1>Launch plan</h1>"
    b"<p>The launch moves to <b>next week</b> because the supplier is late.</p>"
    b"<p>Please review the new schedule before 5 March.</p><table><tr><td>Owner</td><td>Ann</td></tr></table>"
    b"</body></html>\r\n"
)

REPLY = (
    b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\nSubject: Re: contract\r\n"
    b"Date: Wed, 4 Mar 2026 09:00:00 +0000\r\n\r\n"
    b"Hi Bob,\r\n\r\nThe lawyers approved the contract this morning. Can you sign it by Friday?\r\n"
    b"I will send the final copy to the customer afterwards.\r\n\r\nBest regards,\r\nAnn\r\n--\r\n"
    b"Ann Example | Head of Legal | +1 555 0100\r\n\r\n"
    b"On Tue, 3 Mar 2026 at 17:00, Bob <bob@example.org> wrote:\r\n> Is there any news on the contract?\r\n"
    b"> SECRET QUOTED TEXT\r\n"
)

FOREIGN = {
    "de": "Hallo Klaus,\n\nder Bericht ist fertig. Bitte schicke mir die Zahlen bis Freitag. "
    "Danach können wir den Termin festlegen.\n\nViele Grüße\nAnna",
    "fr": "Bonjour Marie,\n\nLa réunion est déplacée à jeudi. "
    "Merci de confirmer votre présence avant demain. "
    "Le compte rendu suivra.\n\nCordialement,\nPaul",
    "ja": "田中様\n\nお世話になっております。会議は明日の午後三時からです。資料を事前にご確認ください。"
    "よろしくお願いいたします。",
}


@pytest.fixture(scope="module")
def models() -> Models:
    return Models.load(MODELS, threads=1)


def _mail(body: str, subject: str = "Note") -> bytes:
    head = (
        f"From: a@example.com\r\nTo: b@example.org\r\nSubject: {subject}\r\n"
        "Date: Wed, 4 Mar 2026 09:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode() + body.encode("utf-8")


@pytest.mark.parametrize("encoder", [True, False])
async def test_html_only_mail(models: Models, encoder: bool) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier(), summary_encoder=encoder)
    try:
        (v,) = await clf.classify_many([extract_facts(HTML_ONLY)])
    finally:
        await clf.close()
    assert "<" not in v.summary and "supplier is late" in v.summary
    assert len(v.summary) <= 300
    assert any(a.due == dt.date(2026, 3, 5) for a in v.actions)


async def test_quoted_reply_and_signature_are_not_summarised(models: Models) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier())
    try:
        (v,) = await clf.classify_many([extract_facts(REPLY)])
    finally:
        await clf.close()
    assert "approved" in v.summary
    assert "SECRET" not in v.summary and "Head of Legal" not in v.summary
    assert [a.due for a in v.actions] == [dt.date(2026, 3, 6)]
    assert all("SECRET" not in a.text for a in v.actions)


@pytest.mark.parametrize("lang", sorted(FOREIGN))
async def test_non_english_mail(models: Models, lang: str) -> None:
    clf = ModelClassifier(models, fallback=RulesClassifier())
    try:
        (v,) = await clf.classify_many(
            [extract_facts(_mail(FOREIGN[lang], subject="Bericht / réunion / 会議"))]
        )
    finally:
        await clf.close()
    assert v.summary and len(v.summary) <= 300
    assert v.fallback_reason == ""
    assert 0.0 <= v.spam_score <= 1.0


def test_central_summary_prefers_central_sentences() -> None:
    sentences = [
        "The budget review is on Monday.",
        "Parking is closed.",
        "Bring the budget numbers to the review.",
        "The review covers the budget for Q2.",
    ]
    emb = np.array([[1, 0], [0, 1], [0.9, 0.1], [0.95, 0.05]], np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    out = S.central(sentences, emb)
    assert "Parking" not in out and out.startswith("The budget review")


def test_features_are_stable_and_bounded() -> None:
    facts = extract_facts(REPLY)
    a, b = F.featurize(facts), F.featurize(facts)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert np.all(np.diff(a[0]) > 0) and a[0].min() >= 0 and a[0].max() < F.DIM
    assert F.featurize(extract_facts(b""))[0].size > 0  # empty mail still has header facts
    assert "emailaddr" in F.normalise_text("write to ann@example.com")
    assert len(F.encoder_text(extract_facts(_mail("x" * 20_000)))) <= F.ENCODER_CHARS


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=3000))
def test_features_never_raise_on_arbitrary_mail(raw: bytes) -> None:
    facts = extract_facts(b"Subject: x\r\n\r\n" + raw)
    idx, val = F.featurize(facts)
    assert idx.size == val.size and (idx.size == 0 or (idx.min() >= 0 and idx.max() < F.DIM))
    assert np.all(np.isfinite(val))
    assert len(F.encoder_text(facts)) <= F.ENCODER_CHARS
    F.looks_foreign(facts.text)
    assert S.lead(facts.text, facts.subject) is not None
