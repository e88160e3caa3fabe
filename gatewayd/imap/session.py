"""One IMAP client connection: gatewayd's own pre-auth dialogue, login pass-through, then a framed relay.

Before login gatewayd answers CAPABILITY, ID, NOOP, STARTTLS, LOGIN, AUTHENTICATE PLAIN and LOGOUT
itself (and the ``+`` of synchronising literals). LOGIN opens a connection upstream and authenticates
there with the same credentials. After that bytes flow both ways through two ``Framer``s, literal
bodies in chunks with ``drain()`` backpressure, so memory per connection stays bounded whatever the
message size. The upstream answers ``+`` to the client's synchronising literals; while one is pending
the client side waits, so a refusal (tagged NO/BAD) cancels the literal on both sides in step.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import itertools
import logging
import ssl
from collections.abc import Awaitable, Callable
from typing import Protocol

from gatewayd import logs
from gatewayd import metrics as gw_metrics
from gatewayd.errors import GatewayError, Throttled, Unauthorized, UpstreamUnavailable, imap_reply
from gatewayd.imap import capability, metrics, upstream
from gatewayd.imap.framing import (
    MAX_LITERAL,
    Framer,
    Line,
    LiteralChunk,
    ProtocolError,
    TooLong,
    response_kind,
    tag_and_command,
    tagged_status,
)
from gatewayd.settings import IMAPSection
from gatewayd.throttle import Throttle

log = logging.getLogger("gatewayd.imap")

READ_SIZE = 64 * 1024
PREAUTH_MAX_LITERAL = 8 * 1024
MAX_BAD_COMMANDS = 20
# Commands the relay answers itself instead of forwarding: they would change the stream under us.
_BLOCKED = {
    "COMPRESS": b"NO Compression is not supported by this proxy",
    "STARTTLS": b"BAD Already authenticated",
    "UNAUTHENTICATE": b"BAD Not supported by this proxy",
    "LOGIN": b"BAD Already authenticated",
    "AUTHENTICATE": b"BAD Already authenticated",
}
_session_ids = itertools.count(1)


class LoginHook(Protocol):
    """Called after a successful login (the watcher); returns a callable that undoes it."""

    def __call__(self, user: str, password: str) -> Awaitable[Callable[[], Awaitable[None]]]: ...


class ClientGone(Exception):
    """The client closed the connection or went silent past the idle timeout."""


class Session:
    """Serve one client connection until it ends; see the module docstring."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        settings: IMAPSection,
        tls_active: bool,
        ssl_context_factory: Callable[[], ssl.SSLContext | None],
        throttle: Throttle,
        on_login: LoginHook | None = None,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.settings = settings
        self.tls_active = tls_active
        self.ssl_context_factory = ssl_context_factory
        self.throttle = throttle
        self.on_login = on_login
        self.id = f"imap-{next(_session_ids)}"
        peer = writer.get_extra_info("peername")
        self.peer_ip = str(peer[0]) if peer else "?"
        self.user = ""
        self.framer = Framer(max_literal=MAX_LITERAL)
        self.upstream: upstream.Upstream | None = None
        self._bad = 0
        self._pending: asyncio.Future[bool] | None = None  # upstream's answer to a synchronising literal
        self._pending_tag = b""
        self._to_client_boundary = True  # no upstream response half-relayed: a BYE may be inserted
        self._deferred: list[bytes] = []  # our own replies waiting for such a boundary
        self._logging_out = False  # the client's last command was LOGOUT: the upstream's BYE is enough
        self.closing = False

    def _log(self, msg: str, *args: object, level: int = logging.INFO) -> None:
        log.log(level, "event=imap_" + msg, *args)

    # --- I/O helpers ------------------------------------------------------------------------------

    async def _read(self) -> bytes:
        try:
            async with asyncio.timeout(self.settings.idle_timeout):
                data = await self.reader.read(READ_SIZE)
        except TimeoutError:
            await self._send(b"* BYE Idle timeout\r\n")
            raise ClientGone() from None
        except (ConnectionError, ssl.SSLError):
            raise ClientGone() from None
        if not data:
            raise ClientGone()
        return data

    async def _event(self) -> Line | LiteralChunk | TooLong:
        while (event := self.framer.next_event()) is None:
            self.framer.feed(await self._read())
        return event

    async def _send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def _reply(self, tag: bytes, text: bytes | str) -> None:
        if isinstance(text, str):
            text = text.encode()
        if text.startswith(b"BAD"):
            gw_metrics.BAD_INPUT.labels(protocol="imap", kind="bad_command").inc()
        await self._send((tag or b"*") + b" " + text + b"\r\n")

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        logs.session_id.set(self.id)  # this task's context: every record of the session carries it
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_TOTAL.inc()
        self._log("connect peer=%s tls=%s", self.peer_ip, self.tls_active)
        undo: Callable[[], Awaitable[None]] | None = None
        try:
            caps = self._preauth_caps()
            await self._send(b"* OK [CAPABILITY " + caps + b"] gatewayd IMAP proxy ready\r\n")
            password = await self._preauth()
            if password is None or self.upstream is None:
                return
            if self.on_login is not None and self.settings.watch:
                try:
                    undo = await self.on_login(self.user, password)
                except Exception:
                    self._log("watch_start_failed user=%s", self.user, level=logging.WARNING)
            del password
            await self._relay(self.upstream)
        except asyncio.CancelledError:
            if self._to_client_boundary and self.closing:
                with contextlib.suppress(Exception):
                    self.writer.write(b"* BYE Server shutting down\r\n")
            raise
        except (ClientGone, ConnectionError, ssl.SSLError):
            pass
        except ProtocolError:
            gw_metrics.BAD_INPUT.labels(protocol="imap", kind="framing").inc()
            with contextlib.suppress(Exception):
                await self._send(b"* BYE Protocol error\r\n")
        except Exception:
            log.exception("event=imap_session_failed")
            with contextlib.suppress(Exception):
                await self._send(b"* BYE Internal error\r\n")
        finally:
            metrics.CONNECTIONS.dec()
            if self.upstream is not None:
                self.upstream.abort()
            if undo is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(undo())
            self.writer.close()
            self._log("disconnect user=%s", self.user)

    def _preauth_caps(self) -> bytes:
        return capability.preauth(
            tls_active=self.tls_active,
            starttls_available=self.ssl_context_factory() is not None,
            plaintext_ok=self.settings.allow_plaintext_auth,
        )

    # --- before authentication ------------------------------------------------------------------

    async def _command(self) -> tuple[bytes, str, list[bytes]] | None:
        """Read one whole command (small literals inlined) as ``(tag, NAME, arguments)``; None if refused."""
        event = await self._event()
        if isinstance(event, TooLong):
            tag, _ = tag_and_command(event.head)
            await self._reply(tag, b"BAD Line too long")
            return None
        if not isinstance(event, Line):  # a literal chunk cannot start a command
            return None
        tag, name = tag_and_command(event.data)
        args: list[bytes] = []
        refused = False
        while True:
            assert isinstance(event, Line)
            text = event.data.rstrip(b"\r\n")
            spec = event.literal
            if spec is not None:
                text = text[: text.rindex(b"~{" if spec.binary else b"{")]
            try:
                args += tokenize(text)
            except ValueError:
                refused = True
            if spec is None:
                break
            if spec.size > PREAUTH_MAX_LITERAL or refused:
                refused = True
                if spec.sync:
                    self.framer.cancel_literal()
                    break
            elif spec.sync:
                await self._send(b"+ Ready\r\n")
            literal = bytearray()
            while self.framer.in_literal:
                chunk = await self._event()
                assert isinstance(chunk, LiteralChunk)
                if not refused:
                    literal += chunk.data
            args.append(bytes(literal))
            event = await self._event()
            if not isinstance(event, Line):
                refused = True
                break
        if refused or not tag or not name:
            self._bad += 1
            await self._reply(tag, b"BAD Syntax error")
            return None
        # The command name token itself is the first argument tokenised: drop tag and name.
        return tag, name, args[2:]

    async def _preauth(self) -> str | None:
        """Run the dialogue until a login succeeds (return the password) or the client leaves (None)."""
        while True:
            if self._bad >= MAX_BAD_COMMANDS:
                await self._send(b"* BYE Too many invalid commands\r\n")
                return None
            command = await self._command()
            if command is None:
                continue
            tag, name, args = command
            metrics.COMMANDS.labels(metrics.command_label(name)).inc()
            if name == "CAPABILITY":
                await self._send(b"* CAPABILITY " + self._preauth_caps() + b"\r\n")
                await self._reply(tag, b"OK CAPABILITY completed")
            elif name == "NOOP":
                await self._reply(tag, b"OK NOOP completed")
            elif name == "ID":
                await self._send(b'* ID ("name" "gatewayd")\r\n')
                await self._reply(tag, b"OK ID completed")
            elif name == "LOGOUT":
                await self._send(b"* BYE Logging out\r\n")
                await self._reply(tag, b"OK LOGOUT completed")
                return None
            elif name == "STARTTLS":
                await self._starttls(tag)
            elif name == "LOGIN":
                if len(args) != 2:
                    self._bad += 1
                    await self._reply(tag, b"BAD Syntax error")
                    continue
                password = await self._login(tag, args[0], args[1])
                if password is not None:
                    return password
            elif name == "AUTHENTICATE":
                creds = await self._authenticate(tag, args)
                if creds is not None:
                    password = await self._login(tag, *creds)
                    if password is not None:
                        return password
            else:
                self._bad += 1
                await self._reply(tag, b"BAD Command not valid before login")

    async def _starttls(self, tag: bytes) -> None:
        ctx = self.ssl_context_factory()
        if self.tls_active or ctx is None:
            await self._reply(tag, b"BAD STARTTLS not available")
            return
        await self._reply(tag, b"OK Begin TLS negotiation now")
        # Anything the client pipelined after STARTTLS was sent in clear: drop it (CVE-2011-0411 class).
        self.framer.take_buffer()
        await self.writer.start_tls(ctx)
        self.tls_active = True

    async def _authenticate(self, tag: bytes, args: list[bytes]) -> tuple[bytes, bytes] | None:
        if not args or args[0].upper() != b"PLAIN":
            await self._reply(tag, b"NO [CANNOT] Unsupported authentication mechanism")
            return None
        if len(args) > 1:
            response = args[1]
        else:
            await self._send(b"+ \r\n")
            event = await self._event()
            if not isinstance(event, Line) or event.literal is not None:
                await self._reply(tag, b"BAD Invalid response")
                return None
            response = event.data.strip()
        if response == b"*":
            await self._reply(tag, b"BAD Authentication cancelled")
            return None
        try:
            decoded = b"" if response == b"=" else base64.b64decode(response, validate=True)
            authz, user, password = decoded.split(b"\0")
        except (ValueError, binascii.Error):
            await self._reply(tag, b"BAD Invalid SASL PLAIN response")
            return None
        if authz and authz != user:
            await self._reply(tag, b"NO [AUTHORIZATIONFAILED] Proxy authorization is not supported")
            return None
        return user, password

    async def _login(self, tag: bytes, raw_user: bytes, raw_password: bytes) -> str | None:
        if not self.tls_active and not self.settings.allow_plaintext_auth:
            await self._reply(tag, b"NO [PRIVACYREQUIRED] Use STARTTLS first")
            return None
        try:
            user, password = raw_user.decode("utf-8"), raw_password.decode("utf-8")
        except UnicodeDecodeError:
            await self._reply(tag, b"BAD Invalid credentials encoding")
            return None
        result = "failed"
        try:
            if self.throttle.blocked(self.peer_ip, user.lower()):
                raise Throttled()
            up = await upstream.connect(self.settings.upstream)
            try:
                async with asyncio.timeout(self.settings.upstream.timeout):
                    ok_line = await up.login(user, password)
            except BaseException:
                up.abort()
                raise
        except Unauthorized as exc:
            delay = self.throttle.failed(self.peer_ip, user.lower())
            self._log("login result=failed user=%s peer=%s", user, self.peer_ip, level=logging.WARNING)
            metrics.LOGINS.labels("failed").inc()
            await asyncio.sleep(delay)
            await self._reply(tag, imap_reply(exc))
            return None
        except (GatewayError, TimeoutError, OSError) as exc:
            result = "throttled" if isinstance(exc, Throttled) else "unavailable"
            if not isinstance(exc, Throttled):
                metrics.UPSTREAM_ERRORS.labels("connect").inc()
                exc = UpstreamUnavailable()
            self._log("login result=%s user=%s peer=%s", result, user, self.peer_ip, level=logging.WARNING)
            metrics.LOGINS.labels(result).inc()
            await self._reply(tag, imap_reply(exc))
            return None
        metrics.LOGINS.labels("ok").inc()
        self.user = user
        self.upstream = up
        self._log("login result=ok user=%s peer=%s", user, self.peer_ip)
        _, _, text = ok_line.rstrip(b"\r\n").partition(b" OK")
        await self._reply(tag, b"OK" + (text or b" Logged in"))
        return password

    # --- after authentication -------------------------------------------------------------------

    async def _relay(self, up: upstream.Upstream) -> None:
        self.framer.max_line = max(self.framer.max_line, 64 * 1024)
        tasks = [
            asyncio.create_task(self._client_to_upstream(up)),
            asyncio.create_task(self._upstream_to_client(up)),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, ClientGone | ConnectionError | ssl.SSLError):
                raise exc

    def _say(self, data: bytes) -> None:
        """Send our own reply to the client between two upstream responses, never inside one."""
        if self._to_client_boundary:
            self.writer.write(data)
        else:
            self._deferred.append(data)

    async def _client_to_upstream(self, up: upstream.Upstream) -> None:
        out = up.writer
        sent = metrics.BYTES.labels("client_to_upstream")
        framer = self.framer
        chunks: list[bytes] = []  # one write per read: a syscall per IMAP line would dominate
        while True:
            event = framer.next_event()
            if event is None:
                if chunks:
                    out.write(b"".join(chunks))
                    chunks.clear()
                await out.drain()
                try:
                    data = await self._read()
                except ClientGone:
                    if framer.in_literal or not framer.at_boundary:
                        up.abort()  # never let a half-sent literal be completed by anything else
                    raise
                sent.inc(len(data))
                framer.feed(data)
                continue
            if isinstance(event, LiteralChunk):
                chunks.append(event.data)
                continue
            if isinstance(event, TooLong):
                if event.first:
                    tag, _ = tag_and_command(event.head)
                    gw_metrics.BAD_INPUT.labels(protocol="imap", kind="line_too_long").inc()
                    self._say((tag or b"*") + b" BAD Line too long\r\n")
                else:
                    chunks.append(b"\r\n")  # end the half-sent command; the upstream answers BAD
                continue
            if event.first:
                tag, name = tag_and_command(event.data)
                metrics.COMMANDS.labels(metrics.command_label(name)).inc()
                if name in _BLOCKED and event.literal is None:
                    self._say(tag + b" " + _BLOCKED[name] + b"\r\n")
                    continue
                self._pending_tag = tag
                self._logging_out = name == "LOGOUT"
            chunks.append(event.data)
            if event.literal is not None and event.literal.sync:
                out.write(b"".join(chunks))
                chunks.clear()
                self._pending = asyncio.get_running_loop().create_future()
                await out.drain()
                go_on = await self._pending
                self._pending = None
                if not go_on:
                    framer.cancel_literal()

    async def _upstream_to_client(self, up: upstream.Upstream) -> None:
        out = self.writer
        received = metrics.BYTES.labels("upstream_to_client")
        framer = up.framer
        chunks: list[bytes] = []
        while True:
            event = framer.next_event()
            if event is None:
                if chunks:
                    out.write(b"".join(chunks))
                    chunks.clear()
                self._to_client_boundary = framer.at_boundary
                if self._to_client_boundary and self._deferred:
                    out.write(b"".join(self._deferred))
                    self._deferred.clear()
                await out.drain()
                data = await up.reader.read(READ_SIZE)
                if not data:
                    if self._to_client_boundary and not self._logging_out:
                        with contextlib.suppress(Exception):
                            await self._send(b"* BYE Upstream server closed the connection\r\n")
                    return
                self._to_client_boundary = False
                received.inc(len(data))
                framer.feed(data)
                continue
            if isinstance(event, LiteralChunk):
                chunks.append(event.data)
                continue
            if isinstance(event, TooLong):
                metrics.UPSTREAM_ERRORS.labels("protocol").inc()
                raise ProtocolError("upstream line too long")
            data = event.data
            if event.first:
                kind = response_kind(data)
                pending = self._pending
                if pending is not None and not pending.done():
                    if kind == "continuation":
                        pending.set_result(True)
                    elif kind == "tagged" and tagged_status(data)[0] == self._pending_tag:
                        pending.set_result(False)
                if capability.mentions_capability(data):
                    data = capability.rewrite(data)
            chunks.append(data)

    def shutdown(self) -> None:
        """Ask the session to end: the caller cancels its task, which sends ``* BYE`` when it can."""
        self.closing = True


def tokenize(text: bytes) -> list[bytes]:
    """Split the text of a command line into atoms and quoted strings (unquoted). ValueError if malformed."""
    out: list[bytes] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == 0x20:
            i += 1
        elif c == 0x22:
            i += 1
            value = bytearray()
            while True:
                if i >= n:
                    raise ValueError("unterminated quoted string")
                c = text[i]
                if c == 0x5C and i + 1 < n:
                    value.append(text[i + 1])
                    i += 2
                elif c == 0x22:
                    i += 1
                    break
                else:
                    value.append(c)
                    i += 1
            out.append(bytes(value))
        else:
            j = text.find(b" ", i)
            j = n if j < 0 else j
            out.append(text[i:j])
            i = j
    return out
