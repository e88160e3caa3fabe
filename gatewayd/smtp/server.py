"""The SMTP listeners: aiosmtpd for the command state machine, STARTTLS and AUTH; our handler turns the
transaction into an ``Envelope`` for ``Intake.accept`` and its outcome (or exception) into a reply."""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import ssl
from collections.abc import Callable
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Session
from aiosmtpd.smtp import Envelope as AioEnvelope

from gatewayd import ids, logs, metrics
from gatewayd.errors import GatewayError, Reject, Throttled, smtp_reply
from gatewayd.settings import SMTPSection, parse_hostport
from gatewayd.smtp.auth import UpstreamAuthenticator
from gatewayd.smtp.intake import Envelope, Intake

log = logging.getLogger("gatewayd.smtp")


class GatewaySMTP(SMTP):
    """aiosmtpd's SMTP with a session id on every log record and a live-session registry for shutdown."""

    def __init__(self, *args: Any, registry: set[GatewaySMTP], listener: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._registry = registry
        self._listener = listener
        self.gw_session = ids.new_id()[-10:]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
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
            await asyncio.sleep(self.authenticator.penalty(client))
        except Throttled as exc:
            metrics.AUTH.labels(result="throttled").inc()
            await server.push(exc.smtp)
            server.transport.close()  # type: ignore[union-attr]
            return None
        login, password = await _read_credentials(server, mechanism, args)
        if login is None or password is None:
            return None  # aiosmtpd already answered (501 / abort)
        try:
            await self.authenticator.verify(client, login, password)
        except GatewayError as exc:
            return exc.smtp
        session.authenticated = True
        session.auth_data = login.decode("utf-8", "replace")  # type: ignore[assignment]
        return "235 2.7.0 Authentication successful"


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
