"""The SMTP listeners: aiosmtpd for the command state machine, STARTTLS and AUTH; our handler turns the
transaction into an ``Envelope`` for ``Intake.accept`` and its outcome (or exception) into a reply."""

from __future__ import annotations

import asyncio
import base64
import binascii
import inspect
import logging
import re
import socket
import ssl
from collections.abc import Callable, Iterable
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from typing import Any, AnyStr, NamedTuple

import aiosmtpd.smtp as aiosmtpd_smtp
from aiosmtpd.smtp import (
    DATA_SIZE_DEFAULT,
    MISSING,
    SMTP,
    AuthResult,
    Session,
    _AuthMechAttr,
)
from aiosmtpd.smtp import Envelope as AioEnvelope
from aiosmtpd.smtp import log as aiosmtpd_log

from gatewayd import ids, logs, metrics
from gatewayd.errors import GatewayError, Reject, Throttled, smtp_reply
from gatewayd.settings import SMTPSection, parse_hostport
from gatewayd.smtp.auth import UpstreamAuthenticator
from gatewayd.smtp.data import DataReader, DataState
from gatewayd.smtp.intake import Envelope, Intake

log = logging.getLogger("gatewayd.smtp")
_IDENT = aiosmtpd_smtp.__ident__


_CHUNK = 1 << 16  # DATA is read in chunks of up to this many octets, not one await per line
# RFC 5321 dot-atom local part @ dot-atom domain in angle brackets: the common MAIL/RCPT argument, for which
# email's header parser (aiosmtpd's way) returns exactly the text between the brackets.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_SIMPLE_ANGLE_ADDR = re.compile(rf"<({_ATEXT}(?:\.{_ATEXT})*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>")


class _Tables(NamedTuple):
    """What aiosmtpd's ``SMTP.__init__`` finds by introspection, found once per (class, handler)."""

    smtp_methods: tuple[tuple[str, str], ...]  # command -> method name on the SMTP object
    builtin_auth: tuple[tuple[str, str], ...]  # mechanism -> method name on the SMTP object
    handler_auth: dict[str, Any]  # mechanism -> handler's bound auth_ method
    handle_hooks: dict[str, Callable[..., Any]]
    ehlo_hook_ver: str | None


_tables: dict[tuple[type, int], tuple[Any, _Tables]] = {}


def _introspect(cls: type[SMTP], handler: Any) -> _Tables:
    cached = _tables.get((cls, id(handler)))
    if cached is not None and cached[0] is handler:
        return cached[1]

    def auth_name(name: str, func: Any) -> str:
        return str(getattr(func, "__auth_mechanism_name__", name.replace("auth_", "").replace("__", "-")))

    hooks = {m.replace("handle_", ""): getattr(handler, m) for m in dir(handler) if m.startswith("handle_")}
    ehlo = hooks.get("EHLO")
    version = None
    if ehlo is not None:
        version = {4: "old", 5: "new"}.get(len(inspect.signature(ehlo).parameters))
        if version is None:
            raise RuntimeError("Unsupported EHLO Hook")
    tables = _Tables(
        smtp_methods=tuple((m.replace("smtp_", ""), m) for m in dir(cls) if m.startswith("smtp_")),
        builtin_auth=tuple(
            (auth_name(m, f), m) for m, f in inspect.getmembers(cls) if m.startswith("auth_") and callable(f)
        ),
        handler_auth={auth_name(m, f): f for m, f in inspect.getmembers(handler) if m.startswith("auth_")},
        handle_hooks=hooks,
        ehlo_hook_ver=version,
    )
    _tables[(cls, id(handler))] = (handler, tables)
    return tables


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with a session id on every log record and a live-session registry for shutdown.

    Its per-connection and per-command hot spots are replaced, keeping its behaviour: the introspection in
    ``__init__`` is done once per handler, MAIL/RCPT addresses of the usual shape skip the header parser,
    DATA is read in chunks (``gatewayd.smtp.data``), and a multi-line reply goes out in one write."""

    def __init__(
        self,
        handler: Any,
        *,
        registry: set[GatewaySMTP],
        listener: str,
        data_size_limit: int | None = DATA_SIZE_DEFAULT,
        enable_SMTPUTF8: bool = False,
        decode_data: bool = False,
        hostname: str | None = None,
        ident: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        timeout: float = 300,
        auth_required: bool = False,
        auth_require_tls: bool = True,
        auth_exclude_mechanism: Iterable[str] | None = None,
        authenticator: Callable[..., AuthResult] | None = None,
    ) -> None:
        # The attributes aiosmtpd's own __init__ sets (tests/test_smtp_data.py compares the two), minus
        # inspect.getmembers/dir/signature on every connection and the event-loop lookup under
        # warnings.catch_warnings: a protocol factory always runs in the loop.
        if decode_data:
            raise ValueError("GatewaySMTP hands the handler bytes only (decode_data=False)")
        if authenticator is None:
            raise ValueError("GatewaySMTP needs an authenticator")
        self.__ident__ = ident or _IDENT
        self.loop = asyncio.get_running_loop()
        asyncio.StreamReaderProtocol.__init__(
            self,
            asyncio.StreamReader(loop=self.loop, limit=self.line_length_limit),
            client_connected_cb=self._cb_client_connected,
            loop=self.loop,
        )
        self.event_handler = handler
        self.data_size_limit = data_size_limit
        self.enable_SMTPUTF8 = enable_SMTPUTF8
        self._decode_data = False
        self.command_size_limits.clear()
        self.hostname = hostname or socket.getfqdn()
        self.tls_context = tls_context
        if tls_context and tls_context.verify_mode not in {ssl.CERT_NONE, ssl.CERT_OPTIONAL}:
            aiosmtpd_log.warning("tls_context.verify_mode not in {CERT_NONE, CERT_OPTIONAL}")
        self.require_starttls = tls_context and require_starttls
        self._timeout_duration = timeout
        self._timeout_handle = None
        self._tls_handshake_okay = True
        self._tls_protocol = None
        self._original_transport = None
        self.session = None
        self.envelope = None
        self.transport = None
        self._handler_coroutine = None
        if not auth_require_tls and auth_required:
            aiosmtpd_log.warning("auth_required == True but auth_require_tls == False")
        self._auth_require_tls = auth_require_tls
        self._proxy_timeout = None
        self._authenticator = authenticator
        self._auth_callback = None
        self._auth_required = auth_required
        tables = _introspect(type(self), handler)
        auth: dict[str, _AuthMechAttr] = {
            name: _AuthMechAttr(getattr(self, meth), True) for name, meth in tables.builtin_auth
        }
        auth.update((name, _AuthMechAttr(f, False)) for name, f in tables.handler_auth.items())
        for m in auth_exclude_mechanism or []:
            auth.pop(m, None)
        self._auth_methods = auth
        self._handle_hooks = tables.handle_hooks
        self._ehlo_hook_ver = tables.ehlo_hook_ver
        self._smtp_methods = {name: getattr(self, meth) for name, meth in tables.smtp_methods}
        self._enforce_call_limit = False
        self._held_reply: list[bytes] = []  # continuation lines of a multi-line reply, sent with its last
        self._registry = registry
        self._listener = listener
        self.gw_session = ids.new_id()[-10:]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # STARTTLS calls this again with the TLS transport: still the same connection and session.
        if self._original_transport is None:
            self._registry.add(self)
            metrics.SMTP_CONNECTIONS.labels(listener=self._listener).inc()
            metrics.SMTP_SESSIONS.inc()
        logs.session_id.set(self.gw_session)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self._registry:
            self._registry.discard(self)
            metrics.SMTP_SESSIONS.dec()
        super().connection_lost(exc)

    @property
    def busy(self) -> bool:
        """In a transaction (between MAIL and the end of DATA): shutdown waits for it."""
        return bool(self.envelope is not None and self.envelope.mail_from is not None)

    async def push(self, status: AnyStr) -> None:
        """As aiosmtpd's, but the continuation lines of a reply ("250-...") wait for its last line so the
        whole reply is one write (EHLO: one send instead of ten)."""
        if isinstance(status, str):
            response = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii")
        else:
            response = status
        if response[3:4] == b"-":
            self._held_reply.append(response + b"\r\n")
            return
        if self._held_reply:
            response = b"".join(self._held_reply) + response
            self._held_reply.clear()
        self._writer.write(response + b"\r\n")
        await self._writer.drain()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parser, with a fast path for <dot-atom@domain> (and without the
        typing.Protocol class it defines on every call)."""
        if not arg:
            return "", ""
        m = _SIMPLE_ANGLE_ADDR.match(arg)
        rest = arg[m.end() :] if m is not None else ""
        if rest[:1] in (" ", "\t"):
            rest = rest.lstrip()  # as the header parser's folding-whitespace rule does
        if m is not None and not rest.startswith("("):  # a comment: the parser's business
            addr = m.group(1)
        else:
            address: Any
            try:
                if arg.lstrip().startswith("<"):
                    address, rest = get_angle_addr(arg)
                else:
                    address, rest = get_addr_spec(arg)
            except HeaderParseError:
                return None, None
            addr = address.addr_spec
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the body in chunks through ``DataReader`` (same replies)."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = DataReader(self.data_size_limit, self.line_length_limit)
        stream = self._reader
        while True:
            chunk = await stream.read(_CHUNK)  # connection loss cancels this task (eof_received)
            if not chunk:
                raise asyncio.CancelledError()  # EOF seen before we were cancelled: the same ending
            rest = body.feed(chunk)
            if rest is not None:
                break
        if rest:
            # Pipelined commands after the terminator go back in front of what the stream still holds.
            stream._buffer[0:0] = rest  # type: ignore[attr-defined]
        if body.state is DataState.TOO_LONG:
            await self.push("500 Line too long (see RFC5321 4.5.3.1.6)")
            self.envelope = self._create_envelope()
            return
        if body.state is DataState.TOO_MUCH:
            await self.push("552 Error: Too much mail data")
            self.envelope = self._create_envelope()
            return
        self.envelope.content = self.envelope.original_content = body.content
        status = await self._call_handler_hook("DATA")
        self.envelope = self._create_envelope()
        await self.push("250 OK" if status is MISSING else status)


class Handler:
    def __init__(
        self,
        intake: Intake,
        settings: SMTPSection,
        *,
        submission: bool,
        authenticator: UpstreamAuthenticator | None,
    ) -> None:
        self.intake = intake
        self.settings = settings
        self.submission = submission
        self.authenticator = authenticator

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: AioEnvelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        out = [r for r in responses if not (r.startswith("250-AUTH") and not self.submission)]
        out.insert(-1, "250-PIPELINING")
        out.insert(-1, "250-ENHANCEDSTATUSCODES")
        return out

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: AioEnvelope, address: str, mail_options: list[str]
    ) -> str:
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: AioEnvelope, address: str, rcpt_options: list[str]
    ) -> str:
        if len(envelope.rcpt_tos) >= self.settings.max_recipients:
            return "452 4.5.3 Too many recipients"
        if not address or "@" not in address:
            metrics.BAD_INPUT.labels(protocol="smtp", kind="bad_rcpt").inc()
            return "553 5.1.3 Recipient address must be a mailbox (user@domain)"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: AioEnvelope) -> str:
        raw = envelope.original_content or b""
        tls = server._tls_protocol is not None
        protocol = "ESMTP" + ("S" if tls else "") + ("A" if session.authenticated else "")
        env = Envelope(
            mail_from=envelope.mail_from or "",
            rcpts=tuple(envelope.rcpt_tos),
            helo=session.host_name or "",
            peer_ip=str(session.peer[0]) if session.peer else "",
            protocol=protocol,
            login=session.auth_data if isinstance(session.auth_data, str) else "",
        )
        try:
            return await self.intake.accept(env, raw)
        except GatewayError as exc:
            if not isinstance(exc, Reject):
                metrics.MESSAGES.labels(result="tempfail").inc()
            return exc.smtp
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("event=intake_error")
            metrics.MESSAGES.labels(result="tempfail").inc()
            return smtp_reply(exc)

    async def handle_AUTH(
        self, server: SMTP, session: Session, envelope: AioEnvelope, args: list[str]
    ) -> str | None:
        """PLAIN and LOGIN, checked asynchronously against upstream (aiosmtpd's authenticator is sync)."""
        if self.authenticator is None:
            return "504 5.5.4 Unrecognized authentication type"
        mechanism = args[0].upper()
        client = str(session.peer[0]) if session.peer else "?"
        try:
            self.authenticator.check(client)
        except Throttled as exc:
            await _refuse(server, exc)
            return None
        login, password = await _read_credentials(server, mechanism, args)
        if login is None or password is None:
            return None  # aiosmtpd already answered (501 / abort)
        try:
            await self.authenticator.verify(client, login, password)
        except Throttled as exc:  # this user is throttled, from whichever address
            await _refuse(server, exc)
            return None
        except GatewayError as exc:
            return exc.smtp
        session.authenticated = True
        session.auth_data = login.decode("utf-8", "replace")  # type: ignore[assignment]
        return "235 2.7.0 Authentication successful"


async def _refuse(server: SMTP, exc: Throttled) -> None:
    metrics.AUTH.labels(result="throttled").inc()
    await server.push(exc.smtp)
    server.transport.close()  # type: ignore[union-attr]


async def _read_credentials(
    server: SMTP, mechanism: str, args: list[str]
) -> tuple[bytes | None, bytes | None]:
    def b64(text: str) -> bytes | None:
        try:
            return base64.b64decode(text.encode(), validate=True)
        except (binascii.Error, ValueError):
            return None

    if mechanism == "PLAIN":
        blob: Any = b64(args[1]) if len(args) > 1 else await server.challenge_auth("")
        if not isinstance(blob, bytes):
            if len(args) > 1:
                await server.push("501 5.5.2 Can't decode base64")
            return None, None
        parts = blob.split(b"\0")
        if len(parts) != 3:
            metrics.BAD_INPUT.labels(protocol="smtp", kind="bad_auth").inc()
            await server.push("501 5.5.2 Can't split auth value")
            return None, None
        return parts[1], parts[2]
    if mechanism == "LOGIN":
        user: Any = b64(args[1]) if len(args) > 1 else await server.challenge_auth("Username:")
        if not isinstance(user, bytes):
            if len(args) > 1:
                await server.push("501 5.5.2 Can't decode base64")
            return None, None
        password: Any = await server.challenge_auth("Password:")
        if not isinstance(password, bytes):
            return None, None
        return user, password
    await server.push("504 5.5.4 Unrecognized authentication type")
    return None, None


def smtp_factory(
    intake: Intake,
    settings: SMTPSection,
    *,
    submission: bool,
    hostname: str,
    tls_context: Callable[[], ssl.SSLContext | None],
    registry: set[GatewaySMTP],
    authenticator: UpstreamAuthenticator | None,
    listener: str,
) -> Callable[[], GatewaySMTP]:
    handler = Handler(intake, settings, submission=submission, authenticator=authenticator)

    def make() -> GatewaySMTP:
        ctx = tls_context()
        return GatewaySMTP(
            handler,
            registry=registry,
            listener=listener,
            hostname=hostname,
            data_size_limit=settings.max_message_size,
            enable_SMTPUTF8=True,
            decode_data=False,
            tls_context=ctx,
            require_starttls=False,
            auth_required=submission,
            auth_require_tls=submission and not settings.allow_plaintext_auth,
            auth_exclude_mechanism=[] if submission else ["PLAIN", "LOGIN"],
            authenticator=_never,
            timeout=settings.session_timeout,
            ident="gatewayd",
        )

    return make


def _never(*_: Any) -> AuthResult:  # every mechanism goes through Handler.handle_AUTH
    return AuthResult(success=False)


async def start_listeners(addresses: list[str], factory: Callable[[], GatewaySMTP]) -> list[asyncio.Server]:
    loop = asyncio.get_running_loop()
    servers = []
    for address in addresses:
        host, port = parse_hostport(address)
        servers.append(await loop.create_server(factory, host, port, reuse_address=True))
    return servers
