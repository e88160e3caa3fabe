"""The plain values that cross the boundary between protocol adapters and the analysis pipeline.

Protocol code (SMTP, IMAP, the CLI) turns a raw message into ``MessageFacts``; a ``Classifier`` turns
facts into a ``Verdict``. Neither side sees sockets, sessions, settings or the database.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Literal, Protocol

CATEGORIES = ("personal", "newsletter", "notification", "transactional", "social")
Stage = Literal["fast", "encoder", "rules"]


@dataclass(frozen=True, slots=True)
class MessageFacts:
    """What the analysis may know about one message; built by ``gatewayd.mime.extract_facts``."""

    message_id: str
    subject: str
    from_addr: str  # addr-spec of From:, lower-cased; "" if absent or unparsable
    from_name: str
    reply_to: str
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: dt.datetime | None  # from the Date: header, timezone-aware when it had one
    headers: tuple[tuple[str, str], ...]  # every header (name as sent, value unfolded), in order
    text: str  # readable body text: text/plain, else HTML converted to text; quoted replies kept
    html: str  # the raw text/html part, "" if none
    links: tuple[str, ...]  # URLs found in the body (href targets and bare URLs)
    attachments: tuple[str, ...]  # attachment file names
    size: int  # bytes of the raw message
    mail_from: str = ""  # envelope sender, when known
    rcpt_to: tuple[str, ...] = ()  # envelope recipients, when known
    defects: int = 0  # MIME defects the parser found

    def header(self, name: str) -> str:
        """The first header with this name (case-insensitive), or ""."""
        lname = name.lower()
        return next((v for k, v in self.headers if k.lower() == lname), "")

    def has_header(self, name: str) -> bool:
        lname = name.lower()
        return any(k.lower() == lname for k, _ in self.headers)


@dataclass(frozen=True, slots=True)
class ActionItem:
    text: str
    due: dt.date | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """The analysis of one message. Scores are probabilities in [0, 1]."""

    spam_score: float
    phishing_score: float
    category: str  # one of CATEGORIES
    category_scores: dict[str, float]
    important: bool
    priority_score: float
    summary: str
    actions: tuple[ActionItem, ...] = ()
    stage: Stage = "rules"
    fallback_reason: str = ""  # why the rules answered when models were configured ("" otherwise)
    elapsed_ms: float = 0.0
    reasons: tuple[str, ...] = field(default_factory=tuple)  # short tags of what fired (rules)

    def is_spam(self, threshold: float = 0.5) -> bool:
        return self.spam_score >= threshold

    def is_phishing(self, threshold: float = 0.5) -> bool:
        return self.phishing_score >= threshold


def damp_priority(priority: float, *, spam: float, phishing: float, category: str) -> float:
    """Bulk and hostile mail never gets to shout: likely spam or phishing, and newsletters, keep a fifth of
    their priority score. Every classifier applies this, so ``$Important`` means the same whoever decided."""
    if spam >= 0.5 or phishing >= 0.5 or category == "newsletter":
        return priority * 0.2
    return priority


class Classifier(Protocol):
    """Anything that turns facts into verdicts. Implementations must be safe to call concurrently.

    ``classify_many`` lets model-backed classifiers batch; it returns one verdict per input, in order.
    Blocking work must run off the event loop (the pipeline does not wrap calls in an executor).
    """

    name: str

    async def classify_many(self, facts: list[MessageFacts]) -> list[Verdict]: ...

    async def close(self) -> None: ...
