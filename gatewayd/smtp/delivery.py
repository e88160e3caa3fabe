"""Delivery to the upstream SMTP server: per-recipient results, retries with backoff, bounces, reuse of
connections. Reads work from the spool and writes every outcome back to it."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib.protocol import normalize_message_line_endings
from aiosmtplib.status import SMTPStatus

from gatewayd import metrics
from gatewayd.settings import SpoolSection, UpstreamSMTP
from gatewayd.smtp.bounce import Failure, build_dsn, enhanced_status
from gatewayd.spool import Entry, Spool
from gatewayd.tls import client_context

log = logging.getLogger("gatewayd.delivery")

StateCallback = Callable[[Entry, str, str], None]  # entry, state, detail


@dataclass(slots=True)
class Outcome:
    delivered: list[str]
    failed: list[Failure]  # permanent (5xx)
    deferred: dict[str, str]  # recipient -> reply (4xx / connection trouble)


def _mail_options(smtp: aiosmtplib.SMTP, raw: bytes, size: int) -> list[str]:
    opts = []
    if smtp.supports_extension("size"):
        opts.append(f"SIZE={size}")
    if smtp.supports_extension("8bitmime") and not raw.isascii():
        opts.append("BODY=8BITMIME")
    return opts


def wire_data(raw: bytes) -> bytes:
    """The message as sent after DATA: CRLF line endings, a final CRLF, dot-stuffed, then ".\r\n".

    What aiosmtplib's ``data`` does with two regex passes (three with ``sendmail``'s size count); spooled
    messages already have CRLF endings (intake repairs bare CR/LF), so here that is a check, not a rewrite."""
    crlf = raw.count(b"\r\n")
    if raw.count(b"\n") != crlf or raw.count(b"\r") != crlf:
        raw = normalize_message_line_endings(raw)
    elif not raw.endswith(b"\r\n"):
        raw += b"\r\n"
    stuffed = raw.replace(b"\r\n.", b"\r\n..")
    return (b"." if stuffed.startswith(b".") else b"") + stuffed + b".\r\n"


class Deliverer:
    """Runs ``max_connections`` workers, each keeping one upstream connection open between messages."""

    def __init__(
        self,
        spool: Spool,
        upstream: UpstreamSMTP,
        policy: SpoolSection,
        *,
        hostname: str,
        on_state: StateCallback,
    ) -> None:
        self.spool = spool
        self.upstream = upstream
        self.policy = policy
        self.hostname = hostname
        self.on_state = on_state
        self._queue: asyncio.Queue[Entry] = asyncio.Queue()
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._tls = client_context(upstream.ca_file, upstream.verify) if upstream.tls != "none" else None

    def kick(self) -> None:
        """New work or a flush: look at the spool now."""
        self._wake.set()

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for n in range(self.upstream.max_connections):
                tg.create_task(self._worker(n), name=f"delivery-{n}")
            tg.create_task(self._scheduler(), name="delivery-scheduler")

    async def _scheduler(self) -> None:
        while True:
            now = time.time()
            for entry in self.spool.ready(now):
                if entry.id not in self._inflight:
                    self._inflight.add(entry.id)
                    self._queue.put_nowait(entry)
            waits = [
                e.next_attempt - now
                for e in self.spool.entries.values()
                if not e.done and e.pending and e.id not in self._inflight
            ]
            timeout = min([5.0, *waits])
            self._wake.clear()
            try:
                async with asyncio.timeout(max(timeout, 0.01)):
                    await self._wake.wait()
            except TimeoutError:
                pass

    async def _connect(self) -> aiosmtplib.SMTP:
        up = self.upstream
        smtp = aiosmtplib.SMTP(
            hostname=up.host,
            port=up.port,
            timeout=up.timeout,
            local_hostname=up.helo_name or self.hostname,
            use_tls=up.tls == "tls",
            start_tls=up.tls == "starttls",
            tls_context=self._tls,
            validate_certs=up.verify,
        )
        await smtp.connect()
        return smtp

    async def _worker(self, n: int) -> None:
        smtp: aiosmtplib.SMTP | None = None
        try:
            while True:
                entry = await self._queue.get()
                try:
                    smtp = await self._deliver(smtp, entry)
                finally:
                    self._inflight.discard(entry.id)
                    self._wake.set()
        finally:
            if smtp is not None:
                smtp.close()

    async def _deliver(self, smtp: aiosmtplib.SMTP | None, entry: Entry) -> aiosmtplib.SMTP | None:
        if entry.done or entry.id not in self.spool.entries:  # deleted or held meanwhile
            return smtp
        raw = self.spool.read(entry)
        started = time.perf_counter()
        for attempt in (1, 2):
            fresh = smtp is None
            try:
                if smtp is None:
                    smtp = await self._connect()
                outcome = await self._send(smtp, entry, raw)
                break
            except (
                aiosmtplib.SMTPServerDisconnected,
                aiosmtplib.SMTPConnectError,
                aiosmtplib.SMTPTimeoutError,
                aiosmtplib.SMTPHeloError,
                OSError,
            ) as exc:
                if smtp is not None:
                    smtp.close()
                smtp = None
                if not fresh and attempt == 1:
                    continue  # a kept connection went stale: one more try on a new one, not an attempt
                kind = type(exc).__name__
                metrics.UPSTREAM_ERRORS.labels(kind=kind).inc()
                log.warning("event=upstream_error id=%s error=%s", entry.id, kind)
                outcome = Outcome(
                    [], [], {r: f"451 4.4.1 upstream unreachable ({kind})" for r in entry.pending}
                )
                break
        self._apply(entry, raw, outcome)
        metrics.DELIVERY_SECONDS.observe(time.perf_counter() - started)
        return smtp

    async def _send(self, smtp: aiosmtplib.SMTP, entry: Entry, raw: bytes) -> Outcome:
        """One transaction: MAIL, RCPT per recipient, DATA (aiosmtplib's ``sendmail`` steps, without its
        line-ending rewrites of a message that is already CRLF)."""
        rcpts = list(entry.pending)
        data = wire_data(raw)
        refused: dict[str, tuple[int, str]] = {}
        try:
            await smtp.mail(entry.mail_from, options=_mail_options(smtp, raw, len(data) - 3))
            for rcpt in rcpts:
                try:
                    await smtp.rcpt(rcpt)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    refused[rcpt] = (exc.code, exc.message)
            if len(refused) == len(rcpts):
                await _rset(smtp)
                return self._classify(refused, rcpts, ok=[])
            await _data(smtp, data)
        except aiosmtplib.SMTPResponseException as exc:  # sender refused, DATA refused
            await _rset(smtp)
            failed = {r: refused.get(r, (exc.code, exc.message)) for r in rcpts}
            return self._classify(failed, rcpts, ok=[])
        return self._classify(refused, rcpts, ok=[r for r in rcpts if r not in refused])

    @staticmethod
    def _classify(refused: dict[str, tuple[int, str]], rcpts: list[str], ok: list[str]) -> Outcome:
        failed, deferred = [], {}
        for rcpt in rcpts:
            if rcpt not in refused:
                continue
            code, message = refused[rcpt]
            reply = f"{code} {message}"
            if 500 <= code < 600:
                failed.append(Failure(rcpt, enhanced_status(code, message), reply))
            else:
                deferred[rcpt] = reply
        return Outcome(ok, failed, deferred)

    def _apply(self, entry: Entry, raw: bytes, outcome: Outcome) -> None:
        now = time.time()
        failures = list(outcome.failed)
        entry.pending = [r for r in entry.pending if r in outcome.deferred]
        if outcome.delivered:
            metrics.DELIVERIES.labels(result="delivered").inc(len(outcome.delivered))
        if entry.pending:
            entry.attempts += 1
            entry.last_error = next(iter(outcome.deferred.values()))
            if now - entry.received_at >= self.policy.max_age:
                failures += [
                    Failure(r, "4.4.7", f"{outcome.deferred[r]} (gave up after {entry.attempts} attempts)")
                    for r in entry.pending
                ]
                entry.pending = []
            else:
                delay = min(self.policy.retry_max, self.policy.retry_min * 2 ** (entry.attempts - 1))
                entry.next_attempt = now + delay
                metrics.DELIVERIES.labels(result="deferred").inc(len(entry.pending))
                log.info(
                    "event=delivery_deferred id=%s rcpts=%d attempts=%d retry_in=%.0f reply=%r",
                    entry.id,
                    len(entry.pending),
                    entry.attempts,
                    delay,
                    entry.last_error,
                )
        if failures:
            metrics.DELIVERIES.labels(result="bounced").inc(len(failures))
            self._bounce(entry, raw, failures)
        if not entry.pending:
            entry.done = True
        state = (
            "deferred"
            if entry.pending
            else "bounced"
            if failures and not outcome.delivered
            else "partial"
            if failures
            else "delivered"
        )
        detail = (
            ("; ".join(f.diagnostic for f in failures) or entry.last_error)
            if entry.pending or failures
            else ""
        )
        self.spool.update(entry)
        self.on_state(entry, state, detail)
        if entry.done:
            log.info(
                "event=delivery_done id=%s state=%s delivered=%d failed=%d",
                entry.id,
                state,
                len(outcome.delivered),
                len(failures),
            )

    def _bounce(self, entry: Entry, raw: bytes, failures: list[Failure]) -> None:
        for f in failures:
            log.info("event=delivery_failed id=%s rcpt=%s reply=%r", entry.id, f.recipient, f.diagnostic)
        # Never bounce a bounce (null sender), nor mail from MAILER-DAEMON: that loops.
        if not entry.mail_from or entry.mail_from.lower().startswith("mailer-daemon@"):
            return
        dsn = build_dsn(
            original=raw,
            sender=entry.mail_from,
            failures=failures,
            reporting_mta=self.hostname,
            arrival=dt.datetime.fromtimestamp(entry.received_at, dt.UTC),
            gw_id=entry.id,
        )
        bounce = self.spool.add("", [entry.mail_from], dsn, {"bounce_of": entry.id})
        bounce.recorded = True  # bounces are not user mail: nothing to record
        self.spool.update(bounce)
        self.kick()


async def _data(smtp: aiosmtplib.SMTP, data: bytes) -> None:
    """DATA, then the message already in wire form (``wire_data``); raises as aiosmtplib's ``data`` does."""
    start = await smtp.execute_command(b"DATA")
    if start.code != SMTPStatus.start_input:
        raise aiosmtplib.SMTPDataError(start.code, start.message)
    if smtp.protocol is None:
        raise aiosmtplib.SMTPServerDisconnected("Connection lost")
    smtp.protocol.write(data)
    done = await smtp.protocol.read_response(timeout=smtp.timeout)
    if done.code != SMTPStatus.completed:
        raise aiosmtplib.SMTPDataError(done.code, done.message)


async def _rset(smtp: aiosmtplib.SMTP) -> None:
    try:
        await smtp.rset()
    except aiosmtplib.SMTPException:
        smtp.close()
