"""The composition root: settings -> migrate -> build -> serve -> drain.

Everything long-lived runs in one ``asyncio.TaskGroup``; SIGTERM/SIGINT stop accepting, give sessions in
flight ``SHUTDOWN_GRACE`` seconds, flush metadata and close the spool; SIGHUP reloads TLS certificates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import ssl
import time
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import uvicorn

from gatewayd import metrics, queuectl, sdnotify
from gatewayd.analysis.facts import Classifier
from gatewayd.analysis.pipeline import Pipeline
from gatewayd.analysis.rules import RulesClassifier
from gatewayd.http import build_app
from gatewayd.recorder import Recorder
from gatewayd.settings import AnalysisSection, Settings, TLSSection, parse_hostport
from gatewayd.smtp.auth import UpstreamAuthenticator
from gatewayd.smtp.delivery import Deliverer
from gatewayd.smtp.intake import Intake
from gatewayd.smtp.server import GatewaySMTP, smtp_factory, start_listeners
from gatewayd.spool import Spool
from gatewayd.store.facade import Store

log = logging.getLogger("gatewayd")
SHUTDOWN_GRACE = 20.0


class TLSHolder:
    """The current server TLS context; ``reload`` swaps it (new connections use the new one)."""

    def __init__(self, settings: TLSSection) -> None:
        self.settings = settings
        self.context: ssl.SSLContext | None = None
        self.reload()

    def reload(self) -> None:
        if not self.settings.cert:
            return
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.settings.cert, self.settings.key or None)
        self.context = ctx

    def __call__(self) -> ssl.SSLContext | None:
        return self.context


def build_classifier(settings: AnalysisSection) -> tuple[Classifier, Classifier]:
    """(classifier, fallback). Models that fail to load leave the rules in charge, visibly."""
    rules = RulesClassifier()
    if settings.classifier == "rules":
        return rules, rules
    try:
        from gatewayd import intel

        return intel.build_classifier(settings), rules
    except Exception as exc:  # missing or corrupt model files must not stop the mail
        log.error("event=models_unavailable error=%s fallback=rules", exc)
        metrics.FALLBACKS.labels(reason="unavailable").inc()
        return rules, rules


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hostname = settings.smtp.hostname or socket.getfqdn()
        self.stopping = asyncio.Event()
        self.smtp_sessions: set[GatewaySMTP] = set()
        self.servers: dict[str, list[asyncio.Server]] = {}
        self.tls = TLSHolder(settings.tls)
        self.http_port = 0

    def ports(self, name: str) -> list[int]:
        return [s.sockets[0].getsockname()[1] for s in self.servers.get(name, [])]

    async def run(self) -> None:
        s = self.settings
        store = await Store.open(s.storage.url, pool_size=s.storage.pool_size)
        spool = Spool(s.spool.path, segment_size=s.spool.segment_size, commit_delay=s.spool.commit_delay)
        spool.open()
        classifier, fallback = build_classifier(s.analysis)
        pipeline = Pipeline(classifier, fallback=fallback, budget=s.analysis.budget)
        recorder = Recorder(store, spool)
        replayed = recorder.replay()
        deliverer = Deliverer(
            spool, s.smtp.upstream, s.spool, hostname=self.hostname, on_state=recorder.state
        )
        intake = Intake(
            spool=spool,
            pipeline=pipeline,
            recorder=recorder,
            deliverer=deliverer,
            policy=s.policy,
            hostname=self.hostname,
        )
        metrics.SPOOL_MESSAGES.set_function(spool.queue_size)
        metrics.SPOOL_OLDEST.set_function(spool.oldest_age)
        metrics.SPOOL_HELD.set_function(lambda: len(spool.held))
        authenticator = (
            UpstreamAuthenticator(s.smtp, hostname=self.hostname) if s.smtp.submission_listen else None
        )
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(recorder.run(), name="recorder")
                tg.create_task(deliverer.run(), name="deliverer")
                for name, addresses, submission in (
                    ("smtp", s.smtp.listen, False),
                    ("submission", s.smtp.submission_listen, True),
                ):
                    factory = smtp_factory(
                        intake,
                        s.smtp,
                        submission=submission,
                        hostname=self.hostname,
                        tls_context=self.tls,
                        registry=self.smtp_sessions,
                        authenticator=authenticator,
                        listener=name,
                    )
                    self.servers[name] = await start_listeners(addresses, factory)
                imap = await self._start_imap(store, pipeline)
                self.servers["control"] = [
                    await queuectl.serve(
                        spool,
                        kick=deliverer.kick,
                        on_state=lambda gw_id, state: recorder.set_state(gw_id, state, "by queue command"),
                    )
                ]
                http = await self._start_http(tg, store, spool)
                self._install_signals()
                log.info(
                    "event=started smtp=%s submission=%s imap=%s http=%s spool_messages=%d replayed=%d",
                    self.ports("smtp"),
                    self.ports("submission"),
                    self.ports("imap"),
                    self.http_port,
                    spool.queue_size(),
                    replayed,
                )
                sdnotify.notify("READY=1\nSTATUS=accepting mail")
                watchdog = sdnotify.watchdog_interval()
                if watchdog:
                    tg.create_task(self._watchdog(watchdog), name="watchdog")
                await self.stopping.wait()
                sdnotify.notify("STOPPING=1\nSTATUS=draining")
                log.info("event=stopping sessions=%d", len(self.smtp_sessions))
                await self._drain(imap, http)
                await recorder.drain(5.0)
                raise _Stop()
        except* _Stop:
            pass
        finally:
            with suppress(Exception):
                await pipeline.close()
            spool.close()
            await store.close()
            log.info("event=stopped")

    async def _start_imap(self, store: Store, pipeline: Pipeline) -> Any:
        s = self.settings
        if not (s.imap.listen or s.imap.tls_listen):
            return None
        from gatewayd.imap.server import IMAPProxy

        proxy = IMAPProxy(s, store=store, pipeline=pipeline, ssl_context_factory=self.tls)
        self.servers["imap"] = await proxy.start()
        return proxy

    async def _start_http(self, tg: asyncio.TaskGroup, store: Store, spool: Spool) -> uvicorn.Server:
        host, port = parse_hostport(self.settings.http.listen)

        async def health() -> dict[str, bool]:
            try:
                db = await asyncio.wait_for(store.ping(), 2.0)
            except Exception:
                db = False
            return {"store": bool(db), "spool": spool.root.is_dir(), "accepting": not self.stopping.is_set()}

        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        self.http_port = sock.getsockname()[1]
        config = uvicorn.Config(build_app(health), log_level="warning", access_log=False, lifespan="off")
        server = _HTTPServer(config)
        tg.create_task(server.serve(sockets=[sock]), name="http")
        return server

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stopping.set)
        loop.add_signal_handler(signal.SIGINT, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload)

    def _reload(self) -> None:
        try:
            self.tls.reload()
            log.info("event=tls_reloaded")
        except (OSError, ssl.SSLError) as exc:
            log.error("event=tls_reload_failed error=%s", exc)

    async def _watchdog(self, interval: float) -> None:
        while True:
            sdnotify.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    async def _drain(self, imap: Any, http: uvicorn.Server) -> None:
        for name, servers in self.servers.items():
            if name != "control":
                for server in servers:
                    server.close()
        deadline = time.monotonic() + SHUTDOWN_GRACE
        for session in list(self.smtp_sessions):
            if not session.busy and session.transport is not None:
                with suppress(Exception):
                    await session.push("421 4.3.2 Service shutting down")
                session.transport.close()
        # Shutdown only, bounded by the deadline: aiosmtpd has no hook for "transaction finished".
        while any(s.busy for s in self.smtp_sessions) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        for session in list(self.smtp_sessions):
            if session.transport is not None:
                session.transport.close()
        if imap is not None:
            await imap.shutdown(max(0.0, deadline - time.monotonic()))
        http.should_exit = True


class _Stop(Exception):
    pass


class _HTTPServer(uvicorn.Server):
    """uvicorn without its own signal handling: SIGTERM and SIGINT belong to the daemon, which stops
    the HTTP listener last, so /metrics and /healthz answer while SMTP and IMAP drain."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def run(settings: Settings) -> None:
    """Run the daemon until SIGTERM/SIGINT, with uvloop when installed."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(Daemon(settings).run())
    else:
        uvloop.run(Daemon(settings).run())
