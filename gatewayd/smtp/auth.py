"""SMTP AUTH for submission listeners: credentials are checked against the upstream server's own AUTH.

A verified login may be remembered in memory for a short TTL (as a keyed hash, never the password);
failures are throttled per client address. Nothing here writes credentials to disk or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import time
from collections import defaultdict, deque

import aiosmtplib

from gatewayd import metrics
from gatewayd.errors import Throttled, Unauthorized, UpstreamUnavailable
from gatewayd.settings import SMTPSection
from gatewayd.smtp.delivery import client_tls_context

log = logging.getLogger("gatewayd.smtp.auth")
WINDOW = 600.0  # seconds over which failures count


class UpstreamAuthenticator:
    def __init__(self, settings: SMTPSection, *, hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self._key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        up = settings.upstream
        self._tls = client_tls_context(up.ca_file, up.verify)

    def _digest(self, login: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, login + b"\0" + password, hashlib.sha256).digest()

    def recent_failures(self, client: str, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        window = self._failures[client]
        while window and now - window[0] > WINDOW:
            window.popleft()
        if not window:
            del self._failures[client]
            return 0
        return len(window)

    def penalty(self, client: str) -> float:
        """Seconds to wait before answering this client (grows with its recent failures)."""
        if self.recent_failures(client) >= self.settings.auth_max_failures:
            raise Throttled()
        return min(5.0, self.settings.auth_failure_delay * self.recent_failures(client))

    async def verify(self, client: str, login: bytes, password: bytes) -> None:
        """Return if upstream accepts the login; else raise Unauthorized, Throttled or UpstreamUnavailable."""
        self.penalty(client)
        digest = self._digest(login, password)
        now = time.monotonic()
        if self._cache.get(digest, 0.0) > now:
            metrics.AUTH.labels(result="ok").inc()
            return
        up = self.settings.upstream
        port = up.auth_port or up.port
        tls = up.auth_tls or up.tls
        smtp = aiosmtplib.SMTP(
            hostname=up.auth_host or up.host,
            port=port,
            timeout=up.timeout,
            local_hostname=self.hostname,
            use_tls=tls == "tls",
            start_tls=tls == "starttls",
            tls_context=self._tls,
            validate_certs=up.verify,
        )
        try:
            await smtp.connect()
            await smtp.login(
                login.decode("utf-8", "surrogateescape"), password.decode("utf-8", "surrogateescape")
            )
        except aiosmtplib.SMTPAuthenticationError:
            self._failures[client].append(time.monotonic())
            metrics.AUTH.labels(result="failed").inc()
            log.info("event=auth_failed client=%s failures=%d", client, self.recent_failures(client))
            raise Unauthorized() from None
        except (aiosmtplib.SMTPException, OSError) as exc:
            metrics.AUTH.labels(result="error").inc()
            metrics.UPSTREAM_ERRORS.labels(kind=type(exc).__name__).inc()
            log.warning("event=auth_upstream_error error=%s", type(exc).__name__)
            raise UpstreamUnavailable() from None
        finally:
            smtp.close()
        metrics.AUTH.labels(result="ok").inc()
        if self.settings.auth_cache_ttl:
            self._cache = {k: v for k, v in self._cache.items() if v > now}
            self._cache[digest] = now + self.settings.auth_cache_ttl
