"""Typed failures, and the one table that turns them into SMTP, IMAP and HTTP replies.

Code raises these; protocol adapters translate at their boundary with ``smtp_reply``, ``imap_reply`` or
``http_status``. Anything else is an unexpected error: logged once with its traceback and answered as a
temporary failure, so a client retries and no mail is lost. Exception text is never echoed to a peer.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every failure that has a defined reply."""

    smtp = "451 4.3.0 Temporary failure, please try again later"
    imap = "NO [UNAVAILABLE] Temporary failure, please try again later"
    http = 503


class Reject(GatewayError):
    """Permanent refusal of a message (policy, content)."""

    smtp = "550 5.7.1 Message rejected by policy"
    imap = "NO Rejected by policy"
    http = 422



class TempFail(GatewayError):
    """Try again later: upstream down, storage full, analysis unavailable."""


class Unauthorized(GatewayError):
    smtp = "535 5.7.8 Authentication credentials invalid"
    imap = "NO [AUTHENTICATIONFAILED] Authentication failed"
    http = 401


class Throttled(GatewayError):
    smtp = "421 4.7.0 Too many failed attempts, closing connection"
    imap = "NO [UNAVAILABLE] Too many failed attempts, try again later"
    http = 429


class UpstreamUnavailable(TempFail):
    smtp = "454 4.7.0 Temporary authentication failure"
    imap = "NO [UNAVAILABLE] Upstream server unavailable"
    http = 503



_UNEXPECTED = GatewayError()


def smtp_reply(exc: BaseException) -> str:
    """The SMTP reply line for any exception (unexpected ones become 451)."""
    return exc.smtp if isinstance(exc, GatewayError) else _UNEXPECTED.smtp


def imap_reply(exc: BaseException) -> str:
    """The text after the tag for any exception (unexpected ones become NO [UNAVAILABLE])."""
    return exc.imap if isinstance(exc, GatewayError) else _UNEXPECTED.imap


def http_status(exc: BaseException) -> int:
    return exc.http if isinstance(exc, GatewayError) else 500
