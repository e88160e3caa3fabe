"""Which IMAP capabilities gatewayd offers: its own before login, the upstream's (filtered) after it.

Pure functions on response lines. After login gatewayd relays bytes with framing awareness only, so it
must not offer anything that changes the byte stream under it (COMPRESS), restarts the connection
state (STARTTLS, UNAUTHENTICATE) or only makes sense before login (AUTH=, SASL-IR, LOGINDISABLED).
"""

from __future__ import annotations

import re

_DROP_EXACT = frozenset({b"STARTTLS", b"LOGINDISABLED", b"SASL-IR", b"UNAUTHENTICATE", b"LOGIN-REFERRALS"})
_DROP_PREFIX = (b"COMPRESS=", b"AUTH=")
_CODE_RE = re.compile(rb"\[CAPABILITY ([^\]]*)\]", re.IGNORECASE)
_UNTAGGED_RE = re.compile(rb"^\* CAPABILITY (.*?)(\r?\n)$", re.IGNORECASE | re.DOTALL)


def keep(capability: bytes) -> bool:
    """Whether an upstream capability passes through the relay correctly."""
    upper = capability.upper()
    return upper not in _DROP_EXACT and not upper.startswith(_DROP_PREFIX)


def filter_list(caps: bytes) -> bytes:
    return b" ".join(c for c in caps.split() if keep(c))


def rewrite(line: bytes) -> bytes:
    """``line`` with every capability list in it (untagged CAPABILITY, [CAPABILITY] code) filtered."""
    match = _UNTAGGED_RE.match(line)
    if match is not None:
        return b"* CAPABILITY " + filter_list(match.group(1)) + match.group(2)
    if b"[CAPABILITY " in line.upper():
        return _CODE_RE.sub(lambda m: b"[CAPABILITY " + filter_list(m.group(1)) + b"]", line, count=1)
    return line


def mentions_capability(line: bytes) -> bool:
    """Cheap pre-check so the relay only rewrites lines that can carry a capability list."""
    return b"CAPABILITY" in line[:64].upper()


def preauth(*, tls_active: bool, starttls_available: bool, plaintext_ok: bool) -> bytes:
    """gatewayd's own capability list before login."""
    caps = [b"IMAP4rev1", b"LITERAL+", b"ID", b"IDLE"]
    if starttls_available and not tls_active:
        caps.append(b"STARTTLS")
    if tls_active or plaintext_ok:
        caps += [b"SASL-IR", b"AUTH=PLAIN"]
    else:
        caps.append(b"LOGINDISABLED")
    return b" ".join(caps)
