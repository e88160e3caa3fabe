"""The IMAP proxy's listeners: accept clients (plain + STARTTLS, or implicit TLS) and run a Session each."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from gatewayd.imap.session import Session
from gatewayd.imap.watcher import AnalysisPipeline, WatcherPool
from gatewayd.settings import Settings, parse_hostport
from gatewayd.throttle import Throttle

log = logging.getLogger("gatewayd.imap")

TLS_HANDSHAKE_TIMEOUT = 30.0


class IMAPProxy:
    """gatewayd's IMAP front: built by the composition root, which calls ``start()`` and ``shutdown()``.

    ``store`` and ``pipeline`` feed the INBOX watcher (``settings.imap.watch``); ``ssl_context_factory``
    returns the current server certificate context (or None when no certificate is configured), so a
    reload on SIGHUP applies to the next connection and the next STARTTLS.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: Any,
        pipeline: AnalysisPipeline | None,
        ssl_context_factory: Callable[[], ssl.SSLContext | None],
        throttle: Throttle | None = None,
    ) -> None:
        self.settings = settings
        self.ssl_context_factory = ssl_context_factory
        self.throttle = throttle or Throttle()
        self.watchers = WatcherPool(settings.imap, store=store, pipeline=pipeline, policy=settings.policy)
        self._servers: list[asyncio.base_events.Server] = []
        self._sessions: dict[asyncio.Task[None], Session] = {}

    @property
    def connections(self) -> int:
        """Client connections open now."""
        return len(self._sessions)

    async def start(self) -> list[asyncio.base_events.Server]:
        """Bind every listener (port 0 picks a free port) and start the master-user watchers."""
        cfg = self.settings.imap
        for address, implicit_tls in [(a, False) for a in cfg.listen] + [(a, True) for a in cfg.tls_listen]:
            host, port = parse_hostport(address)
            server = await asyncio.start_server(self._handler(implicit_tls), host, port, limit=64 * 1024)
            self._servers.append(server)
            bound = server.sockets[0].getsockname()[1]
            log.info("event=imap_listen address=%s:%d tls=%s", host, bound, implicit_tls)
        await self.watchers.start_master()
        return list(self._servers)

    def _handler(
        self, implicit_tls: bool
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if implicit_tls:
                ctx = self.ssl_context_factory()
                if ctx is None:
                    writer.close()
                    return
                try:
                    await writer.start_tls(ctx, ssl_handshake_timeout=TLS_HANDSHAKE_TIMEOUT)
                except (OSError, ssl.SSLError, TimeoutError):
                    writer.close()
                    return
            session = Session(
                reader,
                writer,
                settings=self.settings.imap,
                tls_active=implicit_tls,
                ssl_context_factory=self.ssl_context_factory,
                throttle=self.throttle,
                on_login=self.watchers.attach,
            )
            # The session runs in a task of its own: shutdown() cancels it, and this handler (which
            # asyncio's stream server watches) returns normally either way.
            task = asyncio.create_task(session.run(), name=session.id)
            self._sessions[task] = session
            try:
                await asyncio.wait([task])
            finally:
                self._sessions.pop(task, None)

        return handle

    async def shutdown(self, timeout: float) -> None:  # noqa: ASYNC109 (the daemon's contract)
        """Stop accepting, tell live sessions ``* BYE``, wait up to ``timeout`` for them, then close."""
        for server in self._servers:
            server.close()
        for task, session in list(self._sessions.items()):
            session.shutdown()
            task.cancel()
        if self._sessions:
            await asyncio.wait(list(self._sessions), timeout=timeout)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                for server in self._servers:
                    await server.wait_closed()
        await self.watchers.close()
        self._servers.clear()
