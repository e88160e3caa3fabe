"""The SMTP DATA body reader: takes the stream in chunks (not one await per line) and yields the message
with dot-stuffing undone, or the reason it is refused, once CRLF.CRLF has been read.

Pure: no sockets. The server feeds it whatever the transport delivered and gives back what follows the
terminator (pipelined commands). Same outcomes as aiosmtpd's line-by-line loop (RFC 5321 4.5.2, 4.5.3.1.6):
a line longer than ``line_limit`` octets with its CRLF answers 500, a body over ``size_limit`` octets answers
552, both only after the whole body has been read, and nothing over the limits is kept in memory.
"""

from __future__ import annotations

import enum

_TERMINATOR = b"\r\n.\r\n"
_KEEP = len(_TERMINATOR) - 1  # bytes kept after discarding, so a terminator split across chunks is found


class DataState(enum.Enum):
    NOMINAL = "nominal"
    TOO_LONG = "too_long"  # a line over the limit: 500 once the body has been read
    TOO_MUCH = "too_much"  # the body over the size limit: 552 once the body has been read


class DataReader:
    """Feed chunks with ``feed``; once it returns the bytes that followed the terminator, ``state`` and
    ``content`` hold the outcome (``content`` is only meaningful when the state is NOMINAL)."""

    __slots__ = ("_buf", "_line_start", "_scanned", "content", "line_limit", "size_limit", "state")

    def __init__(self, size_limit: int | None, line_limit: int = 1001) -> None:
        self.size_limit = size_limit or 0  # octets of body (still dot-stuffed), 0: no limit
        self.line_limit = line_limit  # octets of one line including its CRLF
        self.state = DataState.NOMINAL
        self.content = b""
        # The body begins at a line start: a virtual CRLF in front lets one search find both ".\r\n" as the
        # first line (an empty message) and "\r\n.\r\n" anywhere later.
        self._buf = bytearray(b"\r\n")
        self._scanned = 0  # the terminator does not start in _buf before this offset
        self._line_start = 2  # offset in _buf of the first line whose length is not checked yet

    def feed(self, chunk: bytes) -> bytes | None:
        """Take the next bytes of the stream; return None while the terminator has not been seen, else the
        bytes after it (possibly empty), which belong to the next command."""
        buf = self._buf
        buf += chunk
        end = buf.find(_TERMINATOR, self._scanned)
        if end < 0:
            self._scanned = max(0, len(buf) - _KEEP)
            if self.state is DataState.NOMINAL:
                # A "." or ".\r" after the last CRLF may be the start of the terminator, not body.
                tail = 1 if buf.endswith(b"\r\n.") else 2 if buf.endswith(b"\r\n.\r") else 0
                self._check(len(buf) - tail)
            if self.state is not DataState.NOMINAL and len(buf) > _KEEP:
                del buf[: len(buf) - _KEEP]  # nothing of a refused body is kept
                self._scanned = 0
            return None
        rest = bytes(buf[end + len(_TERMINATOR) :])
        if self.state is DataState.NOMINAL:
            self._check(end + 2)
        if self.state is DataState.NOMINAL:
            # Undo dot-stuffing: a line that begins with a dot loses that dot (RFC 5321 4.5.2).
            del buf[end + 2 :]
            self.content = bytes(buf.replace(b"\r\n.", b"\r\n")[2:])
        self._buf = bytearray()
        return rest

    def _check(self, upto: int) -> None:
        """Apply both limits to _buf[2:upto], the body read so far (while the state is NOMINAL nothing has
        been dropped, so offset 2 is the first body octet)."""
        buf, start = self._buf, self._line_start
        over = bool(self.size_limit) and upto - 2 > self.size_limit
        stop = self.size_limit + 2 if over else upto  # a line-by-line reader stops looking at the limit
        last = buf.rfind(b"\r\n", start, stop)
        if last >= start:
            if max(map(len, buf[start:last].split(b"\r\n"))) + 2 > self.line_limit:
                self.state = DataState.TOO_LONG
                return
            start = self._line_start = last + 2
        if stop - start + 1 > self.line_limit:
            # The unfinished line is too long whatever ends it: even if its last octet read is the CR,
            # with the LF it is one octet longer.
            self.state = DataState.TOO_LONG
        elif over:
            self.state = DataState.TOO_MUCH
