# ruff: noqa: RUF001  (full-width punctuation in the Japanese samples is intended)
"""Table tests of the rule-based classifier, the text helpers and action extraction."""

from __future__ import annotations

import datetime as dt
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.analysis.actions import find_actions
from gatewayd.analysis.facts import CATEGORIES, MessageFacts, Verdict
from gatewayd.analysis.rules import RulesClassifier
from gatewayd.analysis.signals import registrable
from gatewayd.analysis.text import split_sentences, strip_quotes, strip_signature, summarize_lead
from gatewayd.mime import extract_facts

DATE = dt.datetime(2026, 11, 18, 9, 30, tzinfo=dt.UTC)  # a Wednesday
CLF = RulesClassifier()


def facts(
    *,
    subject: str = "Lunch on Thursday",
    from_addr: str = "ann@example.org",
    from_name: str = "Ann Example",
    reply_to: str = "",
    to: tuple[str, ...] = ("bob@example.net",),
    text: str = "Hi Bob,\nshall we meet at noon at the usual place? I booked a table.\n\nAnn",
    html: str = "",
    links: tuple[str, ...] = (),
    attachments: tuple[str, ...] = (),
    extra: tuple[tuple[str, str], ...] = (),
    date: dt.datetime | None = DATE,
    message_id: str | None = None,
) -> MessageFacts:
    """Facts of an ordinary personal message, with whatever the case changes."""
    mid = f"abc123@{from_addr.rpartition('@')[2]}" if message_id is None else message_id
    headers: list[tuple[str, str]] = [("From", f"{from_name} <{from_addr}>"), ("To", ", ".join(to)),
                                      ("Subject", subject)]
    if date is not None:
        headers.append(("Date", date.strftime("%a, %d %b %Y %H:%M:%S +0000")))
    if mid:
        headers.append(("Message-ID", f"<{mid}>"))
    if reply_to:
        headers.append(("Reply-To", reply_to))
    headers.extend(extra)
    return MessageFacts(message_id=mid, subject=subject, from_addr=from_addr, from_name=from_name,
                        reply_to=reply_to, to=to, cc=(), date=date, headers=tuple(headers), text=text,
                        html=html, links=links, attachments=attachments, size=len(text) + len(html))


def classify(f: MessageFacts) -> Verdict:
    return CLF.classify(f)


SPAM_TEXT = ("CONGRATULATIONS dear friend!!! You have won the LOTTERY jackpot of $1,000,000.00!!! "
             "This is 100% free money, act now, limited time. Click here to claim your cash bonus. "
             "Cheap viagra too! Unsubscribe here.")

SPAM_CASES = [
    ("classic lottery", facts(subject="YOU HAVE WON!!! CLAIM YOUR PRIZE NOW", text=SPAM_TEXT,
                              links=("http://claim.example.biz/x",), date=None, message_id="")),
    ("image only bulk", facts(subject="Special offer", text="",
                              html='<html><img src="http://x.biz/a.png"></html>',
                              links=("http://x.biz/1",), extra=(("X-Mailer", "Atomic Mail Sender 9.1"),),
                              from_name="support@bank.example <promo@cheap.biz>",
                              from_addr="promo@cheap.biz")),
    ("malware attachment", facts(subject="Invoice overdue", text="See attached invoice, click here.",
                                 attachments=("invoice.pdf.exe",), date=None,
                                 reply_to="billing@other.example")),
]
HAM_CASES = [
    ("personal", facts()),
    ("work reply", facts(subject="Re: Q3 plan", text="Thanks, the numbers look right to me. Let us ship it.",
                         extra=(("In-Reply-To", "<x@example.org>"),))),
    ("newsletter", facts(subject="This week in Python", from_addr="news@lwn.example",
                         text="Articles this week: a new parser. Unsubscribe: https://lwn.example/u",
                         links=("https://lwn.example/u", "https://lwn.example/a"),
                         extra=(("List-Unsubscribe", "<https://lwn.example/u>"),
                                ("List-Id", "<lwn.lwn.example>")))),
    ("japanese", facts(subject="明日の会議について",
                       text="明日の会議は午後3時からです。資料を準備してください。")),
]


@pytest.mark.parametrize(("name", "f"), SPAM_CASES, ids=[c[0] for c in SPAM_CASES])
def test_spam_scores_above_threshold(name: str, f: MessageFacts) -> None:
    verdict = classify(f)
    assert verdict.spam_score >= 0.5, verdict.reasons
    assert not verdict.important


@pytest.mark.parametrize(("name", "f"), HAM_CASES, ids=[c[0] for c in HAM_CASES])
def test_ham_scores_below_threshold(name: str, f: MessageFacts) -> None:
    verdict = classify(f)
    assert verdict.spam_score < 0.3, verdict.reasons
    assert verdict.phishing_score < 0.3, verdict.reasons


PAYPAL_HTML = ('<p>Your account has been suspended. Please verify your account and password: '
               '<a href="http://paypal-secure.example.ru/login">https://www.paypal.com/signin</a></p>')
PHISHING_CASES = [
    ("anchor shows other domain", facts(subject="Account notice", from_name="PayPal Service",
                                        from_addr="service@paypa1-mail.example", html=PAYPAL_HTML,
                                        text="Your account has been suspended. Please verify your account.",
                                        links=("http://paypal-secure.example.ru/login",))),
    ("ip url with login lure", facts(subject="Unusual sign-in activity", from_addr="it@corp.example",
                                     text="We saw unusual activity. Log in at http://192.168.13.7/owa to "
                                          "keep your password and avoid suspension.",
                                     links=("http://192.168.13.7/owa",))),
    ("userinfo @ url", facts(subject="Your Apple ID is locked", from_name="Apple Support",
                             from_addr="noreply@secure-id.example",
                             text="Your Apple ID is locked. Sign in to verify your account.",
                             links=("http://appleid.apple.com@evil.example/verify",))),
    ("punycode + shortener", facts(subject="Microsoft 365 password expires", from_name="Microsoft",
                                   from_addr="admin@xn--micrsoft-8za.example",
                                   text="Your password expires today. Log in: https://bit.ly/3xYz",
                                   links=("https://bit.ly/3xYz",))),
]


@pytest.mark.parametrize(("name", "f"), PHISHING_CASES, ids=[c[0] for c in PHISHING_CASES])
def test_phishing_flagged(name: str, f: MessageFacts) -> None:
    verdict = classify(f)
    assert verdict.phishing_score >= 0.5, verdict.reasons
    assert any(r.startswith("PHISH_") for r in verdict.reasons)
    assert not verdict.important


def test_genuine_brand_mail_is_not_phishing() -> None:
    html = '<a href="https://www.paypal.com/activity">https://www.paypal.com/activity</a>'
    f = facts(subject="You sent a payment to Ann", from_name="PayPal", from_addr="service@paypal.com",
              html=html, text="You sent $12.00 to Ann. Receipt #4711.", links=("https://www.paypal.com/activity",))
    verdict = classify(f)
    assert verdict.phishing_score < 0.5, verdict.reasons


def test_click_tracked_newsletter_is_not_phishing() -> None:
    html = '<a href="https://click.esp.example/t/abc123">www.shop.example</a> Spring collection.'
    f = facts(subject="Spring collection", from_addr="news@shop.example", html=html,
              text="www.shop.example Spring collection.", links=("https://click.esp.example/t/abc123",),
              extra=(("List-Unsubscribe", "<mailto:u@shop.example>"),))
    verdict = classify(f)
    assert "PHISH_LINK_TEXT_MISMATCH" in verdict.reasons
    assert verdict.phishing_score < 0.5


CATEGORY_CASES = [
    ("newsletter", facts(subject="Weekly digest", from_addr="news@shop.example",
                         text="Our best articles. View in browser.",
                         extra=(("List-Unsubscribe", "<mailto:u@shop.example>"), ("Precedence", "bulk")))),
    ("notification", facts(subject="Build failed: main #512", from_addr="noreply@ci.example",
                           text="The build of main failed.", extra=(("Auto-Submitted", "auto-generated"),))),
    ("transactional", facts(subject="Your order #A-19221 has shipped", from_addr="orders@shop.example",
                            text="Order 19221 shipped. Tracking number 1Z999. Total $45.90.")),
    ("social", facts(subject="Ann mentioned you in a comment", from_addr="notification@facebookmail.com",
                     text="Ann mentioned you in a comment on a post.")),
    ("social", facts(subject="New connection request", from_addr="invitations@linkedin.com",
                     text="Bob wants to connect with you.")),
    ("personal", facts(subject="Re: dinner", text="Sounds good, see you at eight.",
                       extra=(("In-Reply-To", "<a@example.org>"),))),
    ("personal", facts()),
]


@pytest.mark.parametrize(("expected", "f"), CATEGORY_CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CATEGORY_CASES)])
def test_category(expected: str, f: MessageFacts) -> None:
    verdict = classify(f)
    assert verdict.category == expected, (verdict.category_scores, verdict.reasons)
    assert set(verdict.category_scores) == set(CATEGORIES)
    assert sum(verdict.category_scores.values()) == pytest.approx(1.0)


PRIORITY_CASES = [
    (True, facts(subject="URGENT: contract deadline today", text="Please sign the contract by 5pm today.")),
    (True, facts(subject="Re: server down", text="Can you restart it?", extra=(("In-Reply-To", "<q@x>"),))),
    (True, facts(subject="Budget", text="See numbers.", extra=(("Importance", "high"),))),
    (True, facts(subject="Budget", text="See numbers.", extra=(("X-Priority", "1 (Highest)"),))),
    (False, facts(subject="Lunch sometime", text="We should grab lunch when you are free.")),
    (False, facts(subject="URGENT deadline today: weekly deals", from_addr="deals@shop.example",
                  text="Deals end today.", extra=(("List-Unsubscribe", "<mailto:u@shop.example>"),
                                                  ("List-Id", "<deals.shop.example>")))),
    (False, SPAM_CASES[0][1]),
]


@pytest.mark.parametrize(("important", "f"), PRIORITY_CASES)
def test_priority(important: bool, f: MessageFacts) -> None:
    verdict = classify(f)
    assert verdict.important is important, (verdict.priority_score, verdict.reasons)
    assert 0.0 <= verdict.priority_score <= 1.0


def test_verdict_from_extract_facts_and_classify_many() -> None:
    raw = (b"From: Ann <ann@example.org>\r\nTo: bob@example.net\r\nSubject: Report\r\n"
           b"Date: Wed, 18 Nov 2026 09:30:00 +0000\r\nMessage-ID: <1@example.org>\r\n\r\n"
           b"Hi Bob,\r\nplease send the report by Friday. It is for the board.\r\n\r\n"
           b"On Tue, 17 Nov 2026, Bob wrote:\r\n> here is an old draft\r\n-- \r\nAnn\r\n")
    import asyncio

    verdicts = asyncio.run(CLF.classify_many([extract_facts(raw)]))
    (verdict,) = verdicts
    assert verdict.stage == "rules"
    assert verdict.summary == "please send the report by Friday. It is for the board."
    assert [(a.text, a.due) for a in verdict.actions] == [("please send the report by Friday.",
                                                          dt.date(2026, 11, 20))]
    asyncio.run(CLF.close())


def test_hostile_input_is_fast() -> None:
    nasty = facts(subject="!" * 5000, text=("a" * 50_000 + " ") * 4 + "<a " * 10_000,
                  html='<a href="x">' * 20_000 + "<" * 50_000, links=("http://[::1",) * 1000)
    started = time.perf_counter()
    classify(nasty)
    assert time.perf_counter() - started < 0.5


def test_registrable_domain() -> None:
    assert registrable("mail.example.co.uk") == "example.co.uk"
    assert registrable("a.b.example.com") == "example.com"
    assert registrable("example.com.") == "example.com"


# --- summary -----------------------------------------------------------------------------------------
SUMMARY_CASES = [
    ("quote stripped",
     "Hi Bob,\n\nThe deploy went fine. Metrics look normal.\n\nOn Tue, 17 Nov 2026 at 10:00, Bob Smith\n"
     "<bob@example.net> wrote:\n> Did the deploy work?\n> Thanks",
     "The deploy went fine. Metrics look normal."),
    ("> lines dropped", "> old question?\nYes, that works for me.\n> more\n", "Yes, that works for me."),
    ("outlook original",
     "Approved.\n\n-----Original Message-----\nFrom: Ann\nSent: Monday\nSubject: approve?\n\nPlease approve.",
     "Approved."),
    ("outlook header block",
     "Agreed, go ahead.\n\nFrom: Ann <a@x.org>\nSent: Monday, 2 March\nTo: Bob\n\nOld.",
     "Agreed, go ahead."),
    ("signature dashes", "Meeting moved to 3pm.\n-- \nBob Smith\nACME Corp\n+1 555 0100",
     "Meeting moved to 3pm."),
    ("sign-off", "The file is attached. Let me know what you think.\n\nBest regards,\nBob\nACME",
     "The file is attached. Let me know what you think."),
    ("three sentences max", "One. Two is here. Three too. Four is dropped.", "One. Two is here. Three too."),
    ("abbreviation", "We met Dr. Smith today. He agreed.", "We met Dr. Smith today. He agreed."),
    ("html converted markup", "# Big news\n\n**Our** product launched today. Read more below.\n\n---\n",
     "Big news Our product launched today. Read more below."),
    ("japanese", "田中様\n\n明日の会議は午後3時からです。資料を準備してください！よろしくお願いします。\n",
     "明日の会議は午後3時からです。資料を準備してください！"),
    ("german", "Hallo Anna,\n\ndas Treffen ist verschoben. Bitte gib mir Bescheid.\n\nViele Grüße\nJan",
     "das Treffen ist verschoben. Bitte gib mir Bescheid."),
    ("empty", "", ""),
]


@pytest.mark.parametrize(("name", "text", "expected"), SUMMARY_CASES, ids=[c[0] for c in SUMMARY_CASES])
def test_summarize_lead(name: str, text: str, expected: str) -> None:
    assert summarize_lead(text) == expected


@pytest.mark.parametrize("text", [
    "word " * 200,
    "Supercalifragilistic" * 30,
    "会議" * 400,
    "A first sentence that is reasonably long. " + "x" * 400,
    "Short. " + "y " * 400,
])
def test_summary_respects_limit_and_word_boundaries(text: str) -> None:
    summary = summarize_lead(text, 300)
    assert 0 < len(summary) <= 300
    flat = " ".join(text.split())
    if summary.endswith("…"):
        head = summary[:-1]
        assert flat.startswith(head)
        # Cut at a word boundary, or mid-word (always marked by the "…") where no space is in reach.
        assert flat[len(head)] in " ,;:-" or " " not in flat[240:300]
    else:
        assert flat.startswith(summary)


def test_text_helpers() -> None:
    assert strip_quotes("a\n> b\nc") == "a\nc"
    assert strip_signature("body\n-- \nsig") == "body"
    assert split_sentences("First one. Second one? Third!") == ["First one.", "Second one?", "Third!"]
    assert split_sentences("今日は晴れ。明日は雨？はい！") == ["今日は晴れ。", "明日は雨？", "はい！"]


# --- actions ------------------------------------------------------------------------------------------
ACTION_CASES = [
    ("please send the report by Friday.", dt.date(2026, 11, 20)),
    ("Could you review the slides before 3 March?", dt.date(2027, 3, 3)),
    ("Can you book the room by tomorrow?", dt.date(2026, 11, 19)),
    ("Submit the form by 2026-12-01.", dt.date(2026, 12, 1)),
    ("I need you to call the bank by EOD.", dt.date(2026, 11, 18)),
    ("Make sure the release ships by end of the week.", dt.date(2026, 11, 20)),
    ("Don't forget the review next Monday.", dt.date(2026, 11, 23)),
    ("Please reply by December 5th, 2026.", dt.date(2026, 12, 5)),
    ("The invoice must be paid in 3 days.", dt.date(2026, 11, 21)),
    ("Please have a look when you can.", None),
]


@pytest.mark.parametrize(("sentence", "due"), ACTION_CASES)
def test_find_actions(sentence: str, due: dt.date | None) -> None:
    (action,) = find_actions(f"Hi,\n\n{sentence}\n\nThanks,\nAnn", DATE)
    assert action.text == sentence
    assert action.due == due


@pytest.mark.parametrize("text", [
    "We had a nice time at the lake.",
    "The weather was good on Friday.",
    "> please send me the file by Friday\nOk.",
    "",
])
def test_no_actions(text: str) -> None:
    assert find_actions(text, DATE) == ()


def test_actions_without_date_resolve_against_today() -> None:
    (action,) = find_actions("Please call me tomorrow.", None)
    assert action.due == dt.date.today() + dt.timedelta(days=1)


def test_summary_of_html_mail_through_extract_facts() -> None:
    raw = (b"From: Shop <news@shop.example>\r\nTo: bob@example.net\r\nSubject: News\r\n"
           b"Content-Type: text/html; charset=utf-8\r\n\r\n"
           b"<html><body><h1>Autumn sale</h1><p>Everything is <b>20%</b> off this week.</p>"
           b"<p>Shop now at <a href='https://shop.example/sale'>our store</a>.</p>"
           b"<table><tr><td>Item</td><td>Price</td></tr></table></body></html>")
    summary = CLF.classify(extract_facts(raw)).summary
    assert summary.startswith("Autumn sale Everything is 20% off this week.")
    assert "<" not in summary and "**" not in summary and "#" not in summary


_short_text = st.text(max_size=200)


@settings(max_examples=150, deadline=None)
@given(subject=_short_text, text=st.text(max_size=2000), html=_short_text, from_name=_short_text,
       links=st.lists(_short_text, max_size=5), attachments=st.lists(_short_text, max_size=3))
def test_classify_never_raises_and_scores_are_probabilities(
    subject: str, text: str, html: str, from_name: str, links: list[str], attachments: list[str]
) -> None:
    verdict = classify(facts(subject=subject, text=text, html=html, from_name=from_name, links=tuple(links),
                             attachments=tuple(attachments)))
    for score in (verdict.spam_score, verdict.phishing_score, verdict.priority_score):
        assert 0.0 <= score <= 1.0
    assert verdict.category in CATEGORIES
    assert sum(verdict.category_scores.values()) == pytest.approx(1.0)
    assert len(verdict.summary) <= 300
    assert len(verdict.actions) <= 5
