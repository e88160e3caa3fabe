"""SMTP AUTH for submission listeners: credentials are checked against the upstream server's own AUTH.

A verified login may be remembered in memory for a short TTL (as a keyed hash, never the password);
failures are throttled per client address. Nothing here writes credentials to disk or logs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import time

import aiosmtplib

from gatewayd import metrics
from gatewayd.errors import Throttled, Unauthorized, UpstreamUnavailable
from gatewayd.settings import SMTPSection
from gatewayd.throttle import Throttle
from gatewayd.tls import client_context

log = logging.getLogger("gatewayd.smtp.auth")


class UpstreamAuthenticator:
    def __init__(self, settings: SMTPSection, *, hostname: str) -> None:
        self.settings = settings
        self.hostname = hostname
        self._key = os.urandom(32)
        self._cache: dict[bytes, float] = {}
        self.throttle = Throttle(max_failures=settings.auth_max_failures, delay=settings.auth_failure_delay)
        up = settings.upstream
        self._tls = client_context(up.ca_file, up.verify)

    def _digest(self, login: bytes, password: bytes) -> bytes:
        return hmac.new(self._key, login + b"\0" + password, hashlib.sha256).digest()

    def check(self, client: str, user: str = "") -> None:
        """Raise Throttled when this address (or user) failed too often recently."""
        if self.throttle.blocked(client, user):
            raise Throttled()

    async def verify(self, client: str, login: bytes, password: bytes) -> None:
        """Return if upstream accepts the login; else raise Unauthorized, Throttled or UpstreamUnavailable."""
        user = login.decode("utf-8", "replace").lower()
        self.check(client, user)
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
            delay = self.throttle.failed(client, user)
            metrics.AUTH.labels(result="failed").inc()
            log.info("event=auth_failed client=%s failures=%d", client, self.throttle.failures(client, user))
            await asyncio.sleep(delay)  # slows guessing; the client waits for its 535
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
