"""Table-driven and fuzz tests of the pure IMAP framer."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd.imap.framing import (
    Event,
    Framer,
    Line,
    LiteralChunk,
    LiteralSpec,
    ProtocolError,
    TooLong,
    literal_spec,
    quote,
    response_kind,
    tag_and_command,
    tagged_status,
)


def drain(framer: Framer) -> list[Event]:
    out: list[Event] = []
    while (event := framer.next_event()) is not None:
        out.append(event)
    return out


def frame(data: bytes, **kw: int) -> list[Event]:
    framer = Framer(**kw)
    framer.feed(data)
    return drain(framer)


def normalise(events: list[Event]) -> list[tuple[str, bytes, object]]:
    """Merge consecutive literal chunks, whose boundaries depend on how the input was split."""
    out: list[tuple[str, bytes, object]] = []
    for ev in events:
        if isinstance(ev, LiteralChunk):
            if out and out[-1][0] == "lit" and not out[-1][2]:
                out[-1] = ("lit", out[-1][1] + ev.data, ev.last)
            else:
                out.append(("lit", ev.data, ev.last))
        elif isinstance(ev, Line):
            out.append(("line", ev.data, (ev.first, ev.literal)))
        else:
            out.append(("toolong", ev.head, ev.first))
    return out


SYNC5 = LiteralSpec(5, sync=True, binary=False)
PLUS5 = LiteralSpec(5, sync=False, binary=False, plus=True)
BIN3 = LiteralSpec(3, sync=True, binary=True)

CASES: list[tuple[str, bytes, list[Event]]] = [
    ("simple", b"a1 NOOP\r\n", [Line(b"a1 NOOP\r\n", True)]),
    ("bare lf", b"a1 NOOP\n", [Line(b"a1 NOOP\n", True)]),
    ("two commands", b"a NOOP\r\nb NOOP\r\n", [Line(b"a NOOP\r\n", True), Line(b"b NOOP\r\n", True)]),
    ("incomplete", b"a NOOP", []),
    (
        "sync literal",
        b"a LOGIN {5}\r\nalice {8}\r\npassword\r\n",
        [
            Line(b"a LOGIN {5}\r\n", True, SYNC5),
            LiteralChunk(b"alice", True),
            Line(b" {8}\r\n", False, LiteralSpec(8, sync=True, binary=False)),
            LiteralChunk(b"password", True),
            Line(b"\r\n", False),
        ],
    ),
    (
        "literal plus",
        b"a APPEND INBOX {5+}\r\nhe\r\no\r\nb NOOP\r\n",
        [
            Line(b"a APPEND INBOX {5+}\r\n", True, PLUS5),
            LiteralChunk(b"he\r\no", True),
            Line(b"\r\n", False),
            Line(b"b NOOP\r\n", True),
        ],
    ),
    (
        "literal minus",
        b"a APPEND INBOX {5-}\r\nhello\r\n",
        [
            Line(b"a APPEND INBOX {5-}\r\n", True, LiteralSpec(5, sync=False, binary=False, plus=True)),
            LiteralChunk(b"hello", True),
            Line(b"\r\n", False),
        ],
    ),
    (
        "binary literal with NUL",
        b"a APPEND INBOX ~{3}\r\n\x00\r\n\r\n",
        [Line(b"a APPEND INBOX ~{3}\r\n", True, BIN3), LiteralChunk(b"\x00\r\n", True), Line(b"\r\n", False)],
    ),
    (
        "zero literal continues the command",
        b"a LOGIN {0}\r\n \"x\"\r\n",
        [Line(b"a LOGIN {0}\r\n", True, LiteralSpec(0, True, False)), Line(b' "x"\r\n', False)],
    ),
    ("brace not at end", b"a SEARCH {5} x\r\n", [Line(b"a SEARCH {5} x\r\n", True)]),
    ("not digits", b"a SEARCH {5a}\r\n", [Line(b"a SEARCH {5a}\r\n", True)]),
    (
        "server fetch",
        b"* 1 FETCH (BODY[] {4}\r\nabcd UID 7)\r\na OK done\r\n",
        [
            Line(b"* 1 FETCH (BODY[] {4}\r\n", True, LiteralSpec(4, True, False)),
            LiteralChunk(b"abcd", True),
            Line(b" UID 7)\r\n", False),
            Line(b"a OK done\r\n", True),
        ],
    ),
]


@pytest.mark.parametrize(("data", "expected"), [(d, e) for _, d, e in CASES], ids=[c[0] for c in CASES])
def test_frames(data: bytes, expected: list[Event]) -> None:
    assert frame(data) == expected


def test_literal_streamed_in_pieces() -> None:
    framer = Framer()
    framer.feed(b"a APPEND INBOX {10}\r\n0123")
    assert drain(framer) == [Line(b"a APPEND INBOX {10}\r\n", True, LiteralSpec(10, True, False)),
                             LiteralChunk(b"0123", False)]
    assert framer.in_literal and framer.literal_remaining == 6
    framer.feed(b"456789\r\n")
    assert drain(framer) == [LiteralChunk(b"456789", True), Line(b"\r\n", False)]
    assert framer.at_boundary


def test_cancel_literal() -> None:
    framer = Framer()
    framer.feed(b"a APPEND INBOX {10}\r\n")
    assert drain(framer)[0].literal == LiteralSpec(10, True, False)  # type: ignore[union-attr]
    framer.cancel_literal()
    framer.feed(b"b NOOP\r\n")
    assert drain(framer) == [Line(b"b NOOP\r\n", True)]


def test_too_long_line_is_skipped_and_stream_recovers() -> None:
    framer = Framer(max_line=100)
    framer.feed(b"a1 " + b"x" * 150)
    assert drain(framer) == []
    framer.feed(b"y" * 500)
    assert drain(framer) == []
    framer.feed(b"zz\r\nb NOOP\r\n")
    events = drain(framer)
    assert isinstance(events[0], TooLong) and events[0].head.startswith(b"a1 xxx")
    assert events[1:] == [Line(b"b NOOP\r\n", True)]


def test_too_long_complete_line() -> None:
    assert frame(b"a " + b"x" * 200 + b"\r\n", max_line=100) == [TooLong(b"a " + b"x" * 62, True)]


def test_absurd_literal_is_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        frame(b"a APPEND INBOX {99999999999999999999}\r\n")
    with pytest.raises(ProtocolError):
        frame(b"a APPEND INBOX {1001}\r\n", max_literal=1000)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"a1 NOOP\r\n", (b"a1", "NOOP")),
        (b"a1 uid fetch 1:* FLAGS\r\n", (b"a1", "UID FETCH")),
        (b"A003 login {5}\r\n", (b"A003", "LOGIN")),
        (b"DONE\r\n", (b"DONE", "")),
        (b"\r\n", (b"", "")),
        (b"* NOOP\r\n", (b"", "")),
        (b"+ x\r\n", (b"", "")),
        (b"a(b NOOP\r\n", (b"", "")),
        (b"tag \x01\r\n", (b"tag", "")),
    ],
)
def test_tag_and_command(line: bytes, expected: tuple[bytes, str]) -> None:
    assert tag_and_command(line) == expected


def test_response_helpers() -> None:
    assert response_kind(b"* OK hi\r\n") == "untagged"
    assert response_kind(b"+ idling\r\n") == "continuation"
    assert response_kind(b"+\r\n") == "continuation"
    assert response_kind(b"a1 OK done\r\n") == "tagged"
    assert tagged_status(b"a1 no [AUTHENTICATIONFAILED] x\r\n") == (b"a1", "NO")
    assert tagged_status(b"a1 OK\r\n") == (b"a1", "OK")


def test_literal_spec_and_quote() -> None:
    assert literal_spec(b"x {12+}\r\n") == LiteralSpec(12, sync=False, binary=False, plus=True)
    assert literal_spec(b"x ~{12}\r\n") == LiteralSpec(12, sync=True, binary=True)
    assert literal_spec(b"x {12}\r\ny") is None
    assert quote('pa"ss\\') == b'"pa\\"ss\\\\"'
    assert quote("pässword") == b"{9+}\r\np\xc3\xa4ssword"


# --- fuzz -------------------------------------------------------------------------------------------

_pieces = st.one_of(
    st.sampled_from([b"a NOOP\r\n", b"{3}\r\n", b"{0}\r\n", b"~{2}\r\n", b"{4+}\r\n", b"\r\n", b"\n", b"}",
                     b"{", b"* 1 FETCH (BODY[] {5}\r\n", b"a OK x\r\n", b"+ go\r\n", b"DONE\r\n"]),
    st.binary(max_size=20),
)
_streams = st.lists(_pieces, max_size=30).map(b"".join)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=400, deadline=None)
@given(data=_streams, cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12))
def test_fuzz_any_split_frames_identically(data: bytes, cuts: list[int]) -> None:
    try:
        whole = normalise(frame(data, max_line=64))
    except ProtocolError:
        return
    framer = Framer(max_line=64)
    events: list[Event] = []
    for piece in _split(data, cuts):
        framer.feed(piece)
        events += drain(framer)
    assert normalise(events) == whole


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8))
def test_fuzz_random_bytes_only_raise_protocol_error(data: bytes, cuts: list[int]) -> None:
    framer = Framer(max_line=32, max_literal=1000)
    total = 0
    try:
        for piece in _split(data, cuts):
            framer.feed(piece)
            for ev in drain(framer):
                if isinstance(ev, Line | LiteralChunk):
                    total += len(ev.data)
                if isinstance(ev, Line):
                    tag_and_command(ev.data)
                    response_kind(ev.data)
    except ProtocolError:
        return
    # Nothing is invented: what came out is never more than what went in.
    assert total <= len(data)


@settings(max_examples=200, deadline=None)
@given(body=st.binary(min_size=1, max_size=300), tail=st.binary(max_size=30).filter(lambda b: b"\n" not in b))
def test_fuzz_literal_bodies_roundtrip(body: bytes, tail: bytes) -> None:
    stream = b"a APPEND INBOX {%d+}\r\n" % len(body) + body + tail + b"\r\n"
    events = normalise(frame(stream, max_line=1 << 20))
    assert events[1] == ("lit", body, True)
    assert events[2][0] == "line" and events[2][1] == tail + b"\r\n"
