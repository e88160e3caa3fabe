"""RFC 3464 delivery status notifications for recipients that failed for good."""

from __future__ import annotations

import datetime as dt
import email.utils
import uuid
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Failure:
    recipient: str
    status: str  # enhanced status code, e.g. "5.1.1"
    diagnostic: str  # the remote reply, e.g. "550 5.1.1 <x@y>: Recipient address rejected"


def _header_block(raw: bytes, limit: int = 64 * 1024) -> bytes:
    end = raw.find(b"\r\n\r\n")
    if end < 0:
        end = raw.find(b"\n\n")
    head = raw if end < 0 else raw[:end]
    return head[:limit]


def _clean(text: str) -> str:
    return " ".join(text.replace("\r", " ").replace("\n", " ").split())


def build_dsn(
    *,
    original: bytes,
    sender: str,
    failures: list[Failure],
    reporting_mta: str,
    arrival: dt.datetime,
    gw_id: str,
) -> bytes:
    """A multipart/report DSN to ``sender`` with one per-recipient block per failure and the original
    headers (not the body: that would re-deliver possible spam to the sender)."""
    boundary = f"gw-dsn-{uuid.uuid4().hex}"
    now = email.utils.format_datetime(dt.datetime.now(dt.UTC))
    human = "\r\n".join(
        [
            "This is the mail system at host " + reporting_mta + ".",
            "",
            "Your message could not be delivered to one or more recipients.",
            "",
        ]
        + [f"<{f.recipient}>: {_clean(f.diagnostic)}" for f in failures]
    )
    per_rcpt = "\r\n\r\n".join(
        f"Final-Recipient: rfc822; {f.recipient}\r\nAction: failed\r\nStatus: {f.status}\r\n"
        f"Diagnostic-Code: smtp; {_clean(f.diagnostic)}"
        for f in failures
    )
    status = (
        f"Reporting-MTA: dns; {reporting_mta}\r\nX-Gatewayd-Queue-ID: {gw_id}\r\n"
        f"Arrival-Date: {email.utils.format_datetime(arrival)}\r\n\r\n{per_rcpt}\r\n"
    )
    parts = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: <{sender}>",
        "Subject: Undelivered Mail Returned to Sender",
        f"Date: {now}",
        f"Message-ID: <{uuid.uuid4().hex}@{reporting_mta}>",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Description: Notification",
        "",
        human,
        "",
        f"--{boundary}",
        "Content-Type: message/delivery-status",
        "Content-Description: Delivery report",
        "",
        status,
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "Content-Description: Undelivered Message Headers",
        "",
    ]
    head = "\r\n".join(parts).encode("utf-8") + b"\r\n"
    return head + _header_block(original) + f"\r\n\r\n--{boundary}--\r\n".encode()


def enhanced_status(code: int, message: str) -> str:
    """The enhanced status code in a reply, else one derived from the basic code."""
    first = message.split(None, 1)[0] if message else ""
    parts = first.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return first
    return f"{str(code)[0]}.0.0" if code else "4.0.0"
