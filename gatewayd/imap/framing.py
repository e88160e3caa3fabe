"""Pure IMAP framing: split a client or server byte stream into lines and literals, without I/O.

IMAP interleaves text lines with literals: a line that ends in ``{n}`` (synchronising), ``{n+}``
(RFC 7888 LITERAL+), ``{n-}`` (LITERAL-) or ``~{n}`` (RFC 3516 BINARY) is followed by exactly ``n``
raw bytes, then the same command (or response) goes on with another line. ``Framer`` finds those
boundaries incrementally so a proxy can forward literal bodies in chunks as they arrive and never
hold a whole message in memory.

Who answers ``+`` to a synchronising literal: before authentication gatewayd speaks IMAP itself and
sends the continuation; after authentication the *upstream* server sends it and the proxy only
relays it. If the upstream refuses the literal (a tagged ``NO``/``BAD`` instead of ``+``) the
client will not send the bytes, and the relay calls ``Framer.cancel_literal()`` so both stay in step.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

MAX_LINE = 64 * 1024
MAX_LITERAL = 1 << 40

# A literal announcement is the last thing on a line before CRLF (quoted strings cannot hold CR/LF).
_LITERAL_RE = re.compile(rb"(~?)\{(\d{1,20})([+-]?)\}\r?\n\Z")
_ATOM_RE = re.compile(rb"[^\x00-\x20(){%*\"\\\]\x7f-\xff]+")


class ProtocolError(Exception):
    """The stream cannot be framed any more (e.g. an absurd literal size); the connection must end."""


@dataclass(frozen=True, slots=True)
class LiteralSpec:
    """A literal announced at the end of a line."""

    size: int
    sync: bool  # True for {n} and ~{n}: the sender waits for a "+" continuation first
    binary: bool  # ~{n}: may contain NUL (RFC 3516)
    plus: bool = False  # {n+} (LITERAL+) or {n-} (LITERAL-)


@dataclass(frozen=True, slots=True)
class Line:
    """One text line including its line ending. ``first`` is True when it starts a new command/response."""

    data: bytes
    first: bool
    literal: LiteralSpec | None = None


@dataclass(frozen=True, slots=True)
class LiteralChunk:
    """Some bytes of the current literal; ``last`` is True on the chunk that completes it."""

    data: bytes
    last: bool


@dataclass(frozen=True, slots=True)
class TooLong:
    """A line longer than ``max_line`` was discarded up to its end; ``head`` is its start (for the tag)."""

    head: bytes
    first: bool


Event = Line | LiteralChunk | TooLong


class Framer:
    """Incremental framer for one direction of an IMAP connection.

    ``feed(data)`` appends bytes; ``next_event()`` returns the next complete ``Line``, a ``LiteralChunk``
    of whatever literal bytes are buffered, a ``TooLong`` once an overlong line has been skipped, or
    ``None`` when more input is needed. Literal chunks are never larger than what was fed, so memory
    stays bounded by the caller's read size plus ``max_line``.
    """

    def __init__(self, *, max_line: int = MAX_LINE, max_literal: int = MAX_LITERAL) -> None:
        self.max_line = max_line
        self.max_literal = max_literal
        self._buf = b""  # unparsed input starts at self._pos: one copy per feed, none per event
        self._pos = 0
        self._literal = 0  # literal bytes still expected
        self._first = True  # the next line starts a new command/response
        self._skipping: bytes | None = None  # head of an overlong line being discarded
        self._scan = 0  # bytes of _buf already searched for LF

    @property
    def in_literal(self) -> bool:
        return self._literal > 0

    @property
    def literal_remaining(self) -> int:
        return self._literal

    @property
    def at_boundary(self) -> bool:
        """True between commands (nothing partial buffered or pending)."""
        return (self._first and not self._literal and self._pos >= len(self._buf)
                and self._skipping is None)

    def feed(self, data: bytes) -> None:
        if self._pos >= len(self._buf):
            self._buf = bytes(data)
            self._scan = 0
        else:
            self._buf = self._buf[self._pos :] + data
            self._scan -= self._pos
        self._pos = 0

    def take_buffer(self) -> bytes:
        """Remove and return whatever is buffered unparsed (used after STARTTLS to drop injected bytes)."""
        data = self._buf[self._pos :]
        self._buf, self._pos, self._scan = b"", 0, 0
        return data

    def cancel_literal(self) -> None:
        """The peer refused the synchronising literal just announced: it will not be sent."""
        self._literal = 0
        self._first = True

    def next_event(self) -> Event | None:
        buf, pos = self._buf, self._pos
        if self._literal:
            if pos >= len(buf):
                return None
            end = min(pos + self._literal, len(buf))
            data = buf[pos:end]
            self._pos = end
            self._literal -= end - pos
            return LiteralChunk(data, self._literal == 0)
        end = buf.find(b"\n", max(pos, self._scan))
        if end < 0:
            if self._skipping is not None or len(buf) - pos > self.max_line:
                if self._skipping is None:
                    self._skipping = buf[pos : pos + 64]
                self._buf, self._pos, self._scan = b"", 0, 0
            else:
                self._scan = len(buf)
            return None
        data = buf[pos : end + 1]
        self._pos = end + 1
        first = self._first
        if self._skipping is not None or len(data) > self.max_line:
            head = self._skipping if self._skipping is not None else data[:64]
            self._skipping = None
            self._first = True
            return TooLong(head, first)
        spec = literal_spec(data, self.max_literal)
        if spec is not None and spec.size:
            self._literal = spec.size
            self._first = False
        else:
            # A zero-length literal still continues the same command on the next line.
            self._first = spec is None
        return Line(data, first, spec)


def literal_spec(line: bytes, max_literal: int = MAX_LITERAL) -> LiteralSpec | None:
    """The literal announced at the end of ``line`` (with its CRLF), if any."""
    if not line.endswith(b"}\r\n") and not line.endswith(b"}\n"):
        return None
    match = _LITERAL_RE.search(line)
    if match is None:
        return None
    size = int(match.group(2))
    if size > max_literal:
        raise ProtocolError("literal too large")
    binary = bool(match.group(1))
    plus = bool(match.group(3))
    return LiteralSpec(size=size, sync=not plus, binary=binary, plus=plus)


def tag_and_command(line: bytes) -> tuple[bytes, str]:
    """The tag and the upper-cased command name of a client command line (``UID FETCH`` for UID ones).

    Returns ``(b"", "")`` when the line has no valid tag, and ``(tag, "")`` when it has no command.
    """
    parts = line.rstrip(b"\r\n").split(b" ", 3)
    tag = parts[0]
    if not tag or not _ATOM_RE.fullmatch(tag) or b"+" in tag:
        return b"", ""
    if len(parts) < 2 or not _ATOM_RE.fullmatch(parts[1]):
        return tag, ""
    name = parts[1].decode("ascii").upper()
    if name == "UID" and len(parts) > 2 and _ATOM_RE.fullmatch(parts[2]):
        name += " " + parts[2].decode("ascii").upper()
    return tag, name


ResponseKind = Literal["untagged", "continuation", "tagged"]


def response_kind(line: bytes) -> ResponseKind:
    """Classify the first line of a server response."""
    if line.startswith(b"* "):
        return "untagged"
    if line.startswith(b"+"):
        return "continuation"
    return "tagged"


def tagged_status(line: bytes) -> tuple[bytes, str]:
    """``(tag, "OK"|"NO"|"BAD"|...)`` of a tagged response line."""
    parts = line.split(b" ", 2)
    status = parts[1].rstrip(b"\r\n").decode("ascii", "replace").upper() if len(parts) > 1 else ""
    return parts[0], status


def quote(value: str) -> bytes:
    """Render ``value`` as an IMAP quoted string if it can be one, else as a non-synchronising literal."""
    raw = value.encode("utf-8")
    if all(0x20 <= b < 0x7F for b in raw) and len(raw) < 1024:
        return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d+}\r\n%s" % (len(raw), raw)
