"""Weak category and priority labels from headers and wording: how the training labels were made.

No public corpus labels mail as personal/newsletter/notification/transactional/social, so training uses these
rules (documented in models/MODEL_CARD.md). They are also the classifier's header priors: a List-Unsubscribe
header is strong evidence whatever the text says.
"""

from __future__ import annotations

import re

from gatewayd.analysis.facts import MessageFacts

SOCIAL_DOMAINS = (
    "facebook",
    "facebookmail",
    "twitter",
    "linkedin",
    "instagram",
    "myspace",
    "friendster",
    "orkut",
    "meetup",
    "pinterest",
    "reddit",
    "nextdoor",
    "tiktok",
    "mastodon",
    "tumblr",
    "flickr",
    "youtube",
    "classmates",
    "hi5",
    "bebo",
    "quora",
    "strava",
    "discord",
    "slack",
)
_SOCIAL_SUBJECT = re.compile(
    r"friend request|tagged you|wants to connect|invitation to connect|mentioned you|commented on|"
    r"new follower|followed you|liked your|endorsed you|sent you a message on|joined \w+ network",
    re.I,
)
_TRANSACTIONAL = re.compile(
    r"\b(receipt|invoice|order (?:#|no\.?|number|confirmation|confirmed|status)|your order|has shipped|"
    r"shipping confirmation|shipment|tracking number|payment (?:received|confirmation|due)|"
    r"booking (?:confirmation|reference)|reservation (?:confirmation|confirmed)|itinerary|"
    r"confirmation (?:number|code)|statement|billing|trip|e-?ticket|boarding pass|subscription renewal|"
    r"refund)\b",
    re.I,
)
_NOTIFY_LOCAL = re.compile(
    r"^(?:[\w.-]*[-_.](?:notifications?|alerts?|no-?reply)|no-?reply|do-?not-?reply|donotreply|notifications?|notify|alerts?|mailer-daemon|postmaster|daemon|"
    r"bugzilla|cron|root|jira|github|buildbot|nagios|monitor|system|admin|automated|auto|bounce[s]?|"
    r"updates?|news-?bot)\b",
    re.I,
)
_NOTIFY_SUBJECT = re.compile(
    r"^(?:\[bug|\[jira\]|cron\b|delivery status|undeliverable|returned mail|mail delivery|auto-?reply|"
    r"out of office|automatic reply|alert:|\[?notification)|password reset|reset your password|"
    r"security alert|verify your (?:email|account)|new sign-?in|build (?:failed|succeeded)|"
    r"your .{0,30}(?:is ready|has been updated|was changed)",
    re.I,
)
_NEWS_BODY = re.compile(
    r"unsubscribe|to be removed from|mailing list|opt[- ]?out|view (?:it |this )?in your browser"
    r"|newsletter|you are receiving this",
    re.I,
)
_URGENT = re.compile(
    r"\b(urgent|asap|as soon as possible|immediately|important|deadline|action required|time[- ]sensitive|"
    r"by (?:today|tomorrow|tonight|eod|end of (?:the )?day|monday|tuesday|wednesday|thursday|friday)|"
    r"please (?:reply|respond|confirm|call|review|approve|sign|send|let me know)|can you|could you|"
    r"need (?:you|your)|waiting for your)\b",
    re.I,
)


def _domain(addr: str) -> str:
    return addr.rpartition("@")[2].lower()


def is_social_domain(domain: str) -> bool:
    """True for a social network's own mail domain (any label matches: facebookmail.com, em.linkedin.com)."""
    labels = domain.lower().split(".")
    return domain == "x.com" or any(label in SOCIAL_DOMAINS for label in labels[:-1])


def header_category(facts: MessageFacts) -> str | None:
    """The category the headers alone imply, or None when they say nothing."""
    domain = _domain(facts.from_addr)
    local = facts.from_addr.partition("@")[0]
    if is_social_domain(domain) or _SOCIAL_SUBJECT.search(facts.subject):
        return "social"
    if _TRANSACTIONAL.search(facts.subject):
        return "transactional"
    auto = facts.header("Auto-Submitted").strip().lower()
    if (
        (auto and auto != "no")
        or _NOTIFY_LOCAL.match(local)
        or _NOTIFY_SUBJECT.search(facts.subject)
        or facts.has_header("X-Cron-Env")
    ):
        return "notification"
    precedence = facts.header("Precedence").strip().lower()
    if (
        facts.has_header("List-Unsubscribe")
        or facts.has_header("List-Id")
        or facts.has_header("X-Mailing-List")
        or facts.has_header("Mailing-List")
        or precedence in ("bulk", "list", "junk")
    ):
        return "newsletter"
    return None


def weak_category(facts: MessageFacts) -> str:
    """Header rules first, then a few body cues (Enron has no headers), else personal."""
    cat = header_category(facts)
    if cat:
        return cat
    body = facts.text[:5000]
    if _TRANSACTIONAL.search(body[:600]):
        return "transactional"
    if _NEWS_BODY.search(body[-1500:]):
        return "newsletter"
    return "personal"


def weak_priority(facts: MessageFacts) -> bool:
    """Important = personal mail to few recipients that asks for something, is urgent or is a direct reply."""
    if weak_category(facts) != "personal":
        return False
    recipients = len(facts.to) + len(facts.cc)
    if recipients > 5:
        return False
    subject = facts.subject.strip().lower()
    head = facts.text[:1500]
    if _URGENT.search(facts.subject) or _URGENT.search(head):
        return True
    return subject.startswith(("re:", "aw:", "sv:")) and 0 < recipients <= 2
