"""The proxy's connection to the upstream IMAP server: connect, TLS per settings, and log in as the user."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl

from gatewayd.errors import Unauthorized, UpstreamUnavailable
from gatewayd.imap import capability
from gatewayd.imap.framing import Framer, Line, ProtocolError, quote, response_kind, tagged_status
from gatewayd.settings import UpstreamIMAP
from gatewayd.tls import client_context

READ_SIZE = 64 * 1024
# Upstream responses without literals can be long (UID SEARCH of a big mailbox): allow more than from clients.
UPSTREAM_MAX_LINE = 16 * 1024 * 1024


class Upstream:
    """One connection to the upstream server; ``framer`` keeps any bytes read past the login response."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cfg: UpstreamIMAP) -> None:
        self.reader = reader
        self.writer = writer
        self.cfg = cfg
        self.framer = Framer(max_line=UPSTREAM_MAX_LINE)
        self.capabilities: set[bytes] = set()
        self._tag = 0

    def next_tag(self) -> bytes:
        self._tag += 1
        return b"gw%d" % self._tag

    async def read_line(self) -> bytes:
        """The next response line that starts a response; literal contents in between are skipped."""
        while True:
            event = self.framer.next_event()
            if event is None:
                data = await self.reader.read(READ_SIZE)
                if not data:
                    raise UpstreamUnavailable("upstream closed the connection")
                self.framer.feed(data)
                continue
            if isinstance(event, Line) and event.first:
                self._note_capabilities(event.data)
                return event.data

    async def command(self, text: bytes) -> tuple[bytes, bytes]:
        """Send one simple command; return ``(status, tagged line)``."""
        tag = self.next_tag()
        self.writer.write(tag + b" " + text + b"\r\n")
        await self.writer.drain()
        while True:
            line = await self.read_line()
            if response_kind(line) == "tagged" and tagged_status(line)[0] == tag:
                return tagged_status(line)[1].encode(), line

    def _note_capabilities(self, line: bytes) -> None:
        upper = line.upper()
        if upper.startswith(b"* CAPABILITY "):
            self.capabilities = set(upper[13:].split())
        elif b"[CAPABILITY " in upper:
            start = upper.index(b"[CAPABILITY ") + 12
            self.capabilities = set(upper[start : upper.index(b"]", start)].split())

    async def login(self, user: str, password: str) -> bytes:
        """Authenticate as the user; return the upstream's tagged OK line (its CAPABILITY code filtered).

        Raises ``Unauthorized`` when the upstream refuses the credentials.
        """
        if not self.capabilities:
            await self.command(b"CAPABILITY")
        caps = self.capabilities
        if b"AUTH=PLAIN" in caps:
            token = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode())
            tag = self.next_tag()
            if b"SASL-IR" in caps:
                self.writer.write(tag + b" AUTHENTICATE PLAIN " + token + b"\r\n")
            else:
                self.writer.write(tag + b" AUTHENTICATE PLAIN\r\n")
                await self.writer.drain()
                line = await self.read_line()
                if response_kind(line) != "continuation":
                    raise Unauthorized()
                self.writer.write(token + b"\r\n")
            await self.writer.drain()
            while True:
                line = await self.read_line()
                if response_kind(line) == "tagged" and tagged_status(line)[0] == tag:
                    break
        elif b"LOGINDISABLED" in caps:
            raise UpstreamUnavailable("upstream refuses LOGIN on this connection")
        else:
            args = quote(user) + b" " + quote(password)
            if b"{" in args and b"LITERAL+" not in caps:
                raise Unauthorized()
            _, line = await self.command(b"LOGIN " + args)
        if tagged_status(line)[1] != "OK":
            raise Unauthorized()
        return capability.rewrite(line)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()

    def abort(self) -> None:
        transport = self.writer.transport
        transport.abort()


async def connect(cfg: UpstreamIMAP) -> Upstream:
    """Connect, read the greeting, STARTTLS if configured; ``UpstreamUnavailable`` within the timeout."""
    ctx = client_context(cfg.ca_file, cfg.verify) if cfg.tls != "none" else None
    try:
        async with asyncio.timeout(cfg.timeout):
            reader, writer = await asyncio.open_connection(
                cfg.host, cfg.port, ssl=ctx if cfg.tls == "tls" else None,
                server_hostname=cfg.host if cfg.tls == "tls" else None, limit=READ_SIZE,
            )
            up = Upstream(reader, writer, cfg)
            try:
                greeting = await up.read_line()
                if not greeting.upper().startswith(b"* OK"):
                    raise UpstreamUnavailable("upstream greeting is not OK")
                if cfg.tls == "starttls":
                    status, _ = await up.command(b"STARTTLS")
                    if status != b"OK":
                        raise UpstreamUnavailable("upstream refused STARTTLS")
                    if up.framer.take_buffer():
                        raise UpstreamUnavailable("upstream sent data before the TLS handshake")
                    assert ctx is not None
                    await writer.start_tls(ctx, server_hostname=cfg.host)
                    up.capabilities = set()
            except BaseException:
                up.abort()
                raise
            return up
    except (OSError, TimeoutError, ssl.SSLError, ProtocolError) as exc:
        raise UpstreamUnavailable(f"cannot reach upstream IMAP: {exc.__class__.__name__}") from exc
