"""Run gatewayd's IMAPProxy in a thread of its own, so blocking clients (imaplib, curl, mbsync) can use it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from gatewayd.imap.server import IMAPProxy
from gatewayd.settings import IMAPSection, Settings, UpstreamIMAP
from gatewayd.throttle import Throttle

T = TypeVar("T")


def imap_settings(port: int, **imap: Any) -> Settings:
    """Settings with one plain IMAP listener on port 0 in front of ``127.0.0.1:port``."""
    upstream = imap.pop("upstream", None) or UpstreamIMAP(host="127.0.0.1", port=port, timeout=60)
    section = IMAPSection(**{"listen": ["127.0.0.1:0"], "allow_plaintext_auth": True, "watch": False,
                             "upstream": upstream, **imap})
    return Settings(imap=section)


class ProxyThread:
    """An IMAPProxy on its own event loop in a daemon thread; ``port``/``tls_port`` are where it listens."""

    def __init__(
        self,
        settings: Settings,
        *,
        store: Any = None,
        pipeline: Any = None,
        ssl_context_factory: Callable[[], ssl.SSLContext | None] = lambda: None,
        throttle: Throttle | None = None,
        store_factory: Callable[[], Coroutine[Any, Any, Any]] | None = None,
        first_scan: int | None = None,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

        async def build() -> IMAPProxy:
            return IMAPProxy(settings, store=store, pipeline=pipeline,
                             ssl_context_factory=ssl_context_factory,
                             throttle=throttle or Throttle(delay=0.0))

        if store_factory is not None:
            store = self.call(store_factory())
        self.store = store
        self.proxy = self.call(build())
        if first_scan is not None:
            self.proxy.watchers.first_scan = first_scan
        servers = self.call(self.proxy.start())
        ports = [s.sockets[0].getsockname()[1] for s in servers]
        n_plain = len(settings.imap.listen)
        self.port = ports[0] if n_plain else 0
        self.tls_port = ports[n_plain] if len(ports) > n_plain else 0

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 90) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def connections(self) -> int:
        async def count() -> int:
            return self.proxy.connections

        return self.call(count())

    def wait_connections(self, n: int, timeout: float = 30) -> None:
        """Block until the proxy has exactly ``n`` client connections (event-driven on the proxy loop)."""

        async def wait() -> None:
            async with asyncio.timeout(timeout):
                # A bounded poll of a counter on the proxy's own loop, not a guess at how long things take.
                while self.proxy.connections != n:  # noqa: ASYNC110
                    await asyncio.sleep(0.01)

        self.call(wait(), timeout + 5)

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.call(self.proxy.shutdown(5))
        if self.store is not None and hasattr(self.store, "close"):
            with contextlib.suppress(Exception):
                self.call(self.store.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


class RawClient:
    """A line-oriented socket client for what imaplib cannot do (LITERAL+, IDLE, garbage)."""

    def __init__(self, port: int, *, timeout: float = 60, ctx: ssl.SSLContext | None = None) -> None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock: socket.socket = ctx.wrap_socket(sock, server_hostname="127.0.0.1") if ctx else sock
        self.file = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        data = self.file.readline()
        if not data:
            raise EOFError("connection closed")
        return data

    def until_tagged(self, tag: bytes) -> list[bytes]:
        """Read lines (literals included verbatim) up to and including the tagged response for ``tag``."""
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line.startswith(tag + b" "):
                return out

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.file.close()
            self.sock.close()


def sample_message(i: int) -> bytes:
    """The i-th message of a synthetic mailbox: varied sizes, 8-bit text, a few MIME parts."""
    body = (b"Line %d of a message body, with 8-bit text: caf\xc3\xa9 na\xc3\xafve.\r\n" % i) * (1 + i % 40)
    if i % 97 == 0:
        body += b"x" * 200_000 + b"\r\n"  # now and then a large one
    return (
        b"From: Sender %d <sender%d@example.org>\r\nTo: alice@mail.test\r\nSubject: message %d\r\n"
        b"Date: Sat, 21 Nov 2026 12:00:00 +0000\r\nMessage-ID: <m%d.%d@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: 8bit\r\n\r\n"
        % (i % 13, i % 13, i, i, os.getpid())
    ) + body


def populate(port: int, user: str, password: str, mailbox: str, count: int, batch: int = 200) -> None:
    """APPEND ``count`` messages straight to the server, many per command (MULTIAPPEND + LITERAL+)."""
    conn = RawClient(port, timeout=120)
    conn.line()
    conn.send(b'p0 LOGIN "%s" "%s"\r\n' % (user.encode(), password.encode()))
    assert conn.until_tagged(b"p0")[-1].startswith(b"p0 OK")
    for start in range(0, count, batch):
        parts = [b"p%d APPEND %s" % (start + 1, mailbox.encode())]
        for i in range(start, min(count, start + batch)):
            flags = b" (\\Seen)" if i % 3 == 0 else b" (\\Flagged $Label1)" if i % 7 == 0 else b""
            raw = sample_message(i)
            parts.append(b"%s {%d+}\r\n%s" % (flags, len(raw), raw))
        conn.send(b"".join(parts) + b"\r\n")
        reply = conn.until_tagged(b"p%d" % (start + 1))[-1]
        assert b" OK " in reply, reply
    conn.send(b"p9 LOGOUT\r\n")
    conn.close()
