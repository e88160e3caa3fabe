"""MIME facts: turn a raw RFC 5322 message into ``MessageFacts`` with the stdlib ``email`` package.

Pure: no I/O, no settings. Any input is accepted; what the parser cannot make sense of is counted in
``defects`` instead of raising, so malformed mail is analysed (and relayed) rather than lost.
"""

from __future__ import annotations

import datetime as dt
import email
import email.header
import email.policy
import email.utils
import re
from email.message import Message
from html.parser import HTMLParser

import html2text

from gatewayd.analysis.facts import MessageFacts

MAX_TEXT = 100_000  # characters of body text kept for the analysis
MAX_PARTS = 200  # MIME parts walked; a bomb of nested parts costs no more than this
_URL = re.compile(r"""https?://[^\s<>"')\]]+""", re.IGNORECASE)
_WS = re.compile(r"[ \t]+")


class _LinkCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href")
            if href:
                self.links.append(href.strip())


def html_to_text(html: str) -> str:
    """Readable text from HTML (links kept inline as text only, no wrapping)."""
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.ignore_links = True
    converter.ignore_emphasis = True
    try:
        return converter.handle(html)
    except Exception:  # html2text on hostile markup: fall back to stripping tags
        return re.sub(r"<[^>]*>", " ", html)


def _addr(value: str) -> tuple[str, str]:
    name, addr = email.utils.parseaddr(value or "")
    return name.strip(), addr.strip().lower()


def _addrs(values: list[str]) -> tuple[str, ...]:
    return tuple(a.lower() for _, a in email.utils.getaddresses(values) if a)


def _decode_header(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except Exception:
        return value


def _part_text(part: Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "utf-8"
    try:
        return payload.decode(charset, errors="replace")
    except LookupError:  # unknown charset name
        return payload.decode("utf-8", errors="replace")


def _date(value: str) -> dt.datetime | None:
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


def extract_facts(raw: bytes, *, mail_from: str = "", rcpt_to: tuple[str, ...] = ()) -> MessageFacts:
    """Parse ``raw`` and return the facts the analysis uses. Never raises on bad input."""
    # compat32 keeps header values as sent and tolerates anything; we decode RFC 2047 ourselves.
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    defects = len(msg.defects)
    headers = tuple(
        (k, _decode_header(_WS.sub(" ", str(v)).replace("\r", "").replace("\n", ""))) for k, v in msg.items()
    )

    def get(name: str) -> str:
        lname = name.lower()
        return next((v for k, v in headers if k.lower() == lname), "")

    plain: list[str] = []
    html: list[str] = []
    attachments: list[str] = []
    for count, part in enumerate(msg.walk()):
        if count >= MAX_PARTS:
            defects += 1
            break
        defects += len(part.defects)
        if part.is_multipart():
            continue
        filename = part.get_filename()
        disposition = (part.get("Content-Disposition") or "").lower()
        if filename or disposition.startswith("attachment"):
            attachments.append(_decode_header(filename or ""))
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain":
            plain.append(_part_text(part))
        elif ctype == "text/html":
            html.append(_part_text(part))

    html_text = "\n".join(html)[:MAX_TEXT]
    text = "\n".join(plain) if plain else html_to_text(html_text)
    text = text[:MAX_TEXT]
    links: list[str] = []
    if html_text:
        collector = _LinkCollector()
        try:
            collector.feed(html_text)
        except Exception:
            defects += 1
        links.extend(collector.links)
    links.extend(_URL.findall(text))

    from_name, from_addr = _addr(get("From"))
    _, reply_to = _addr(get("Reply-To"))
    return MessageFacts(
        message_id=get("Message-ID").strip().strip("<>").strip(),
        subject=get("Subject").strip(),
        from_addr=from_addr,
        from_name=from_name,
        reply_to=reply_to,
        to=_addrs([v for k, v in headers if k.lower() == "to"]),
        cc=_addrs([v for k, v in headers if k.lower() == "cc"]),
        date=_date(get("Date")),
        headers=headers,
        text=text,
        html=html_text,
        links=tuple(dict.fromkeys(links))[:500],
        attachments=tuple(attachments),
        size=len(raw),
        mail_from=mail_from,
        rcpt_to=tuple(rcpt_to),
        defects=defects,
    )
