"""The chunked DATA reader and GatewaySMTP's other aiosmtpd replacements, checked against aiosmtpd itself.

1. ``DataReader`` (pure): a table of bodies, fed whole, byte by byte and split at every offset, against a
   line-by-line reference model.
2. ``GatewaySMTP._getaddr`` against aiosmtpd's own parser; ``GatewaySMTP.__init__`` sets what aiosmtpd's does.
3. Real sockets: the same byte scripts sent to stock aiosmtpd and to GatewaySMTP get the same replies and
   hand the handler the same message bytes (dot-stuffing, limits, pipelining, connection loss).
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings

from gatewayd import metrics
from gatewayd.smtp.data import DataReader, DataState
from gatewayd.smtp.delivery import wire_data
from gatewayd.smtp.intake import _has_bare_newline
from gatewayd.smtp.server import GatewaySMTP

END = b".\r\n"


def reference(stream: bytes, size_limit: int, line_limit: int) -> tuple[DataState, bytes, bytes] | None:
    """What a line-by-line reader decides: (state, unstuffed content, bytes after the terminator)."""
    framed = b"\r\n" + stream
    end = framed.find(b"\r\n.\r\n")
    if end < 0:
        return None
    body, rest = framed[2 : end + 2], framed[end + 5 :]
    limit = size_limit or len(body)
    state, pos = DataState.NOMINAL, 0
    for line in body.split(b"\r\n")[:-1]:
        full = len(line) + 2
        if pos + full <= limit:
            if full > line_limit:
                state = DataState.TOO_LONG
                break
        else:
            # The line runs over the size limit: too long if its part within the limit already is.
            if limit - pos >= line_limit:
                state = DataState.TOO_LONG
            break
        pos += full
    if state is DataState.NOMINAL and len(body) > limit:
        state = DataState.TOO_MUCH
    if state is not DataState.NOMINAL:
        return state, b"", rest
    lines = [line[1:] if line.startswith(b".") else line for line in body.split(b"\r\n")]
    return state, b"\r\n".join(lines), rest


BODIES: list[tuple[str, bytes, int, int]] = [  # name, stream, size limit (0: none), line limit
    ("empty message", END, 0, 1001),
    ("one line", b"hello\r\n" + END, 0, 1001),
    ("headers and body", b"Subject: x\r\nFrom: a@b\r\n\r\nbody\r\n" + END, 0, 1001),
    ("dot stuffed", b"..leading dot\r\na\r\n..\r\n...x\r\n" + END, 0, 1001),
    ("first line stuffed", b"..\r\nnext\r\n" + END, 0, 1001),
    ("dot not at line start", b"a.b\r\n a\r\n.b\r\n" + END, 0, 1001),
    ("bare lf is not a line end", b"one\n.\ntwo\r\n" + END, 0, 1001),
    ("bare cr lf dot", b"x\r.\r\ny\r\n" + END, 0, 1001),
    ("pipelined after", b"body\r\n" + END + b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n", 0, 1001),
    ("nul and 8bit", b"\x00\xff\xfe\r\n\x80\r\n" + END, 0, 1001),
    ("line at the limit", b"y" * 999 + b"\r\n" + END, 0, 1001),
    ("line over the limit", b"y" * 1000 + b"\r\n" + END, 0, 1001),
    ("long line then more", b"a\r\n" + b"z" * 3000 + b"\r\nb\r\n" + END + b"QUIT\r\n", 0, 1001),
    ("size at the limit", b"1234567\r\n" + END, 9, 1001),
    ("size over the limit", b"12345678\r\n" + END + b"RSET\r\n", 9, 1001),
    ("far over the size", (b"x" * 76 + b"\r\n") * 400 + END, 1000, 1001),
    ("long line before size", b"q" * 40 + b"\r\n" + b"w" * 10 + b"\r\n", 30, 20),
    ("size before long line", b"q" * 10 + b"\r\n" + b"w" * 40 + b"\r\n" + END, 15, 20),
    ("long line across the size", b"q" * 30 + b"\r\n" + END, 25, 20),
    ("short part across the size", b"ab\r\n" + b"q" * 30 + b"\r\n" + END, 10, 20),
    ("terminator needs line start", b"a.\r\n" + END, 0, 1001),
    ("crlf dot crlf in one", b"\r\n" + END, 0, 1001),
]


def _feed(reader: DataReader, chunks: list[bytes]) -> bytes | None:
    for n, chunk in enumerate(chunks):
        rest = reader.feed(chunk)
        if rest is not None:
            return rest + b"".join(chunks[n + 1 :])
    return None


@pytest.mark.parametrize("name,stream,size,line", BODIES, ids=[b[0] for b in BODIES])
def test_data_reader_matches_line_by_line_reference_at_every_split(
    name: str, stream: bytes, size: int, line: int
) -> None:
    want = reference(stream, size, line)
    splits = [[stream], [stream[i : i + 1] for i in range(len(stream))]]
    splits += [[stream[:i], stream[i:]] for i in range(1, len(stream))] if len(stream) < 5000 else []
    splits += [[stream[i : i + 7] for i in range(0, len(stream), 7)]]
    for chunks in splits:
        reader = DataReader(size, line)
        rest = _feed(reader, chunks)
        got = None if rest is None else (reader.state, reader.content, rest)
        assert got == want, (name, [len(c) for c in chunks][:5])


def test_data_reader_waits_for_the_terminator() -> None:
    reader = DataReader(None)
    for chunk in (b"a\r\n.", b"x\r\n", b"\r\n", b"."):
        assert reader.feed(chunk) is None
    assert reader.feed(b"\r\n") == b""
    assert reader.content == b"a\r\nx\r\n\r\n"  # ".x" was a stuffed line


def test_data_reader_keeps_nothing_of_a_refused_body() -> None:
    reader = DataReader(100)
    for _ in range(1000):
        assert reader.feed(b"x" * 1000 + b"\r\n") is None
        assert len(reader._buf) <= 4
    assert reader.feed(b".\r\n") == b""
    assert reader.state is DataState.TOO_MUCH


ADDRESSES = [
    "<alice@mail.test>",
    "<alice@mail.test> SIZE=100 BODY=8BITMIME",
    "<a.b+c_d-e!#$%&'*/=?^`{|}~@x-y.z>",
    "<>",
    "<a..b@x>",
    "<.a@x>",
    '<"quoted local"@x.test>',
    "<alice@[127.0.0.1]>",
    "<@relay.test:alice@mail.test>",
    "<alice @ mail.test>",
    "<alice@mail.test",
    "alice@mail.test",
    "alice@mail.test SIZE=1",
    "<alice>",
    "<jörg@bücher.test>",
    "<alice@mail.test>trailing",
    "<alice@mail.test> (comment) SIZE=1",
    "<alice@mail.test>\t\x0b SIZE=1 ",
    "<alice@mail.test>(c)",
    "",
    "<",
    "@",
]


async def test_getaddr_agrees_with_aiosmtpd() -> None:
    ours, theirs = _make(GatewaySMTP, _Recorder()), _make(SMTP, _Recorder())

    def parse(smtp: Any, arg: str) -> Any:
        try:
            return smtp._getaddr(arg)
        except Exception as exc:  # aiosmtpd's parser raises IndexError on some input: so must we
            return type(exc)

    for arg in ADDRESSES:
        assert parse(ours, arg) == parse(theirs, arg), arg


async def test_init_sets_what_aiosmtpd_sets() -> None:
    handler = _Recorder()
    ours, theirs = _make(GatewaySMTP, handler), _make(SMTP, handler)
    assert set(vars(theirs)) <= set(vars(ours))
    for key, value in vars(theirs).items():
        if key in ("_auth_methods", "_smtp_methods", "_handle_hooks"):
            assert sorted(getattr(ours, key)) == sorted(value), key
        elif value is None or isinstance(value, (bool, int, float, str, bytes)):
            assert getattr(ours, key) == value, key
        else:
            assert type(getattr(ours, key)) is type(value), key
    assert {k: v.is_builtin for k, v in ours._auth_methods.items()} == {
        k: v.is_builtin for k, v in theirs._auth_methods.items()
    }
    for name, method in ours._smtp_methods.items():
        assert method.__self__ is ours and method.__func__ is getattr(type(ours), f"smtp_{name}"), name


# -- real sockets: stock aiosmtpd vs GatewaySMTP --------------------------------------------------------


class _Recorder:
    """A handler that keeps what DATA handed it."""

    def __init__(self) -> None:
        self.messages: list[bytes] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(envelope.original_content)
        return "250 2.0.0 OK"


def _make(cls: type[SMTP], handler: _Recorder, **kwargs: Any) -> Any:
    extra = {"registry": set(), "listener": "test"} if cls is GatewaySMTP else {}
    return cls(
        handler,
        hostname="test.example",
        ident="test",
        enable_SMTPUTF8=True,
        authenticator=lambda *_: AuthResult(success=False),
        **extra,
        **kwargs,
    )


async def _converse(cls: type[SMTP], script: list[bytes], **kwargs: Any) -> tuple[bytes, list[bytes]]:
    """Send each part of ``script`` (reading replies in between), then read until the server closes."""
    handler = _Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _make(cls, handler, **kwargs), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = await reader.readline()
    for part in script:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.02)  # let the server answer what it has before the next part
    if not script or not script[-1].endswith(b"QUIT\r\n"):
        writer.write_eof()
    async with asyncio.timeout(10):
        replies += await reader.read()
    writer.close()
    server.close()
    await server.wait_closed()
    return replies, handler.messages


HELO = b"EHLO client.test\r\n"
TX = b"MAIL FROM:<bob@mail.test>\r\nRCPT TO:<alice@mail.test>\r\nDATA\r\n"
BIG = (b"y" * 76 + b"\r\n") * 200
SCRIPTS: list[tuple[str, list[bytes], dict[str, Any]]] = [
    ("plain", [HELO, TX, b"Subject: hi\r\n\r\n..dots\r\nbody\r\n.\r\n", b"QUIT\r\n"], {}),
    ("empty body", [HELO, TX, b".\r\n", b"QUIT\r\n"], {}),
    (
        "pipelined",
        [HELO + TX + b"a\r\n.\r\n" + TX.replace(b"DATA\r\n", b""), b"DATA\r\n", b"b\r\n.\r\nQUIT\r\n"],
        {},
    ),
    ("one byte at a time", [HELO, TX, *[bytes([c]) for c in b"x\r\n.y\r\n.\r\n"], b"QUIT\r\n"], {}),
    ("too much", [HELO, TX, BIG + b".\r\n", b"NOOP\r\n", b"QUIT\r\n"], {"data_size_limit": 10_000}),
    ("line too long", [HELO, TX, b"z" * 5000 + b"\r\n.\r\n", b"QUIT\r\n"], {}),
    ("bare lf kept", [HELO, TX, b"a\nb\n.\nc\r\n.\r\n", b"QUIT\r\n"], {}),
    ("lost mid-data", [HELO, TX, b"partial body\r\nno end"], {}),
    ("data before rcpt", [HELO, b"MAIL FROM:<bob@mail.test>\r\n", b"DATA\r\n", b"QUIT\r\n"], {}),
    ("data with argument", [HELO, TX.replace(b"DATA", b"DATA x"), b"QUIT\r\n"], {}),
    ("bad address", [HELO, b"MAIL FROM:<a b>\r\n", b"MAIL FROM:<ok@x.test> SIZE=5\r\n", b"QUIT\r\n"], {}),
]


@pytest.mark.parametrize("name,script,kwargs", SCRIPTS, ids=[s[0] for s in SCRIPTS])
async def test_same_replies_and_content_as_aiosmtpd(
    name: str, script: list[bytes], kwargs: dict[str, Any]
) -> None:
    theirs = await _converse(SMTP, script, **kwargs)
    ours = await _converse(GatewaySMTP, script, **kwargs)
    assert ours == theirs
    if name == "plain":
        assert ours[1] == [b"Subject: hi\r\n\r\n.dots\r\nbody\r\n"]


async def test_ehlo_reply_is_one_write() -> None:
    writes: list[bytes] = []
    smtp = _make(GatewaySMTP, _Recorder())

    class Writer:
        def write(self, data: bytes) -> None:
            writes.append(data)

        async def drain(self) -> None:
            pass

    smtp._writer = Writer()
    for line in ("250-test.example", "250-SIZE 1", "250 HELP"):
        await smtp.push(line)
    assert writes == [b"250-test.example\r\n250-SIZE 1\r\n250 HELP\r\n"]


NEWLINE_CASES = [b"", b"a\r\nb", b"a\nb", b"a\rb", b"\r\r\n", b"\r\n\n", b"\n\r", b"x\r\n" * 50, b"\r", b"\n"]


@pytest.mark.parametrize("raw", NEWLINE_CASES)
def test_bare_newline_check_agrees_with_the_regex(raw: bytes) -> None:
    bare = re.compile(rb"\r(?!\n)|(?<!\r)\n")
    assert _has_bare_newline(raw) == bool(bare.search(raw))


@pytest.mark.parametrize(
    "raw",
    [b"", b"a", b".a\r\n", b"a\r\n.b\r\n..\r\n", b"a\nb\r.c", b"x\r\n", b".", b"\r\n.\r\n", b"\xff\r\n"],
)
def test_delivery_wire_data_is_what_aiosmtplib_sends(raw: bytes) -> None:
    assert wire_data(raw) == PERIOD_REGEX.sub(b"..", normalize_message_line_endings(raw)) + b".\r\n"


async def test_starttls_counts_one_connection_and_one_session(tls_ca: Any) -> None:
    """After STARTTLS aiosmtpd calls connection_made again (with the TLS transport): still one session."""
    registry: set[GatewaySMTP] = set()
    loop = asyncio.get_running_loop()
    factory = lambda: GatewaySMTP(  # noqa: E731
        _Recorder(),
        registry=registry,
        listener="tls-test",
        hostname="test.example",
        tls_context=tls_ca.server_context(),
        authenticator=lambda *_: AuthResult(success=False),
    )
    server = await loop.create_server(factory, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sessions = metrics.SMTP_SESSIONS._value.get()
    connections = metrics.SMTP_CONNECTIONS.labels(listener="tls-test")._value.get()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await reader.readline()
    writer.write(b"EHLO client.test\r\n")
    while (await reader.readline())[3:4] == b"-":
        pass
    writer.write(b"STARTTLS\r\n")
    assert (await reader.readline()).startswith(b"220")
    await writer.start_tls(tls_ca.client_context(), server_hostname="127.0.0.1")
    writer.write(b"EHLO client.test\r\n")
    while (await reader.readline())[3:4] == b"-":
        pass
    assert metrics.SMTP_SESSIONS._value.get() == sessions + 1
    writer.write(b"QUIT\r\n")
    assert (await reader.readline()).startswith(b"221")
    writer.close()
    async with asyncio.timeout(5):
        while registry:  # noqa: ASYNC110 - waiting for the server side to see the close
            await asyncio.sleep(0.01)
    assert metrics.SMTP_SESSIONS._value.get() == sessions
    assert metrics.SMTP_CONNECTIONS.labels(listener="tls-test")._value.get() == connections + 1
    server.close()
    await server.wait_closed()
