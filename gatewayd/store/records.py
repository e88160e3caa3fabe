"""Plain records the storage facade takes and returns; no SQLAlchemy here, so any layer may import them."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Literal

DeliveryState = Literal[
    "queued",
    "delivered",
    "partial",
    "deferred",
    "bounced",
    "quarantined",
    "rejected",
    "held",
    "deleted",
    "seen",
]


@dataclass(slots=True)
class MessageRecord:
    """Metadata of one message seen by gatewayd (SMTP path or IMAP watcher). ``id`` is gatewayd's own id."""

    id: str  # gatewayd id (time-sortable, 26 chars), also sent as X-Gatewayd-Id
    message_id: str  # the Message-ID header without angle brackets ("" if none)
    accounts: list[str]  # lower-cased owners: envelope recipients, authenticated sender, IMAP user
    mail_from: str = ""
    rcpt_to: list[str] = field(default_factory=list)
    from_addr: str = ""
    to_addrs: list[str] = field(default_factory=list)
    subject: str = ""
    date: dt.datetime | None = None
    size: int = 0
    spam_score: float = 0.0
    is_spam: bool = False
    phishing_score: float = 0.0
    is_phishing: bool = False
    category: str = "personal"
    important: bool = False
    priority_score: float = 0.0
    summary: str = ""
    actions: list[dict[str, Any]] = field(default_factory=list)  # [{"text": ..., "due": "YYYY-MM-DD"|None}]
    stage: str = "rules"
    action: str = "tag"  # policy decision: tag | quarantine | reject
    delivery_state: DeliveryState = "queued"
    delivery_detail: str = ""
    source: Literal["smtp", "imap", "cli"] = "smtp"
    received_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))
    updated_at: dt.datetime | None = None


@dataclass(slots=True)
class MailboxEntry:
    """Where an account's copy of a message lives upstream (IMAP), and the keywords gatewayd wrote."""

    account: str
    mailbox: str
    uidvalidity: int
    uid: int
    message: str  # MessageRecord.id
    keywords: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Change:
    """One entry of an account's change log: JMAP /changes reads these in modseq order."""

    account: str
    modseq: int
    kind: str  # "Email" | "Mailbox" ...
    object_id: str
    op: Literal["created", "updated", "destroyed"]
