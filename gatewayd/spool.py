"""Durable spool: an accepted message is on disk (fdatasync) before its 250 is sent.

Layout under ``spool.path``::

    lock                 flock held by the running daemon
    log/seg-000001.log   append-only segments of records (messages and their state changes)
    hold/ID.eml, ID.json messages on hold or in quarantine (one fsynced file pair each; rare path)

Records are ``MAGIC kind len crc32 payload``. A ``M`` record carries a message (a JSON envelope line, then
the raw bytes); an ``S`` record carries the whole current state of one message, so the last ``S`` for an id
wins on replay. Appends from many sessions are made durable by one fdatasync (group commit): callers await
``commit()``; whoever arrives while a sync runs is carried by the next one.

A segment is deleted once it is not the active one and every message whose data it holds is finished;
before that, the state of live messages last written in it is re-appended to the active segment.
A torn tail (crash mid-append) is detected by length/CRC and ignored on replay: its sender never got a 250.
A damaged record elsewhere (bad sector) is skipped up to the next record marker, so one bad record costs
that record only, not every message after it in the segment.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
import struct
import time
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gatewayd import ids

log = logging.getLogger("gatewayd.spool")

MAGIC = b"GWS1"
_HEAD = struct.Struct(">4scII")  # magic, kind, payload length, crc32 of payload
MSG, STATE = b"M", b"S"


class SpoolLocked(Exception):
    """Another process (a running daemon) holds the spool."""


@dataclass(slots=True)
class Entry:
    """One message in the spool and its delivery state. ``pending`` are recipients not yet finished."""

    id: str
    mail_from: str
    rcpts: list[str]
    pending: list[str]
    received_at: float
    size: int
    attempts: int = 0
    next_attempt: float = 0.0
    last_error: str = ""
    recorded: bool = False  # metadata committed to the store
    done: bool = False  # nothing left to do: delivered, bounced or deleted
    meta: dict[str, Any] = field(default_factory=dict)  # metadata record, re-sent to the store on replay
    segment: int = 0  # where the data lives (0 = hold directory)
    offset: int = 0  # offset of the raw message bytes in the segment
    state_segment: int = 0  # segment of the latest S record

    @property
    def finished(self) -> bool:
        return self.done and self.recorded

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "pending": self.pending,
            "attempts": self.attempts,
            "next_attempt": self.next_attempt,
            "last_error": self.last_error,
            "recorded": self.recorded,
            "done": self.done,
        }


@dataclass(slots=True)
class _Segment:
    number: int
    path: Path
    size: int
    live: set[str] = field(default_factory=set)  # ids whose data is here and not finished


class Spool:
    """The spool of one daemon instance. All methods run on the event loop; disk I/O is short and
    sequential (appends, one fdatasync per group), except ``commit`` which syncs in a thread."""

    def __init__(
        self, path: str | os.PathLike[str], *, segment_size: int = 64 << 20, commit_delay: float = 0.0
    ) -> None:
        self.root = Path(path)
        self.log_dir = self.root / "log"
        self.hold_dir = self.root / "hold"
        self.segment_size = segment_size
        self.commit_delay = commit_delay
        self.entries: dict[str, Entry] = {}
        self.held: dict[str, dict[str, Any]] = {}
        self._segments: dict[int, _Segment] = {}
        self._active: _Segment | None = None
        self._fd = -1
        self._lock_fd = -1
        self._readers: dict[int, int] = {}
        self._written = 0  # bytes appended so far (monotonic)
        self._synced = 0  # bytes known durable
        self._sync_task: asyncio.Task[None] | None = None

    # -- opening and replay -------------------------------------------------------------------

    def open(self) -> None:
        """Lock the spool, replay every segment and the hold directory, start a new active segment."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.hold_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.root / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            self._lock_fd = -1
            raise SpoolLocked(f"{self.root} is in use by a running gatewayd") from None
        for path in sorted(self.log_dir.glob("seg-*.log")):
            self._replay(path)
        for entry in list(self.entries.values()):
            if entry.finished:
                del self.entries[entry.id]
            else:
                self._segments[entry.segment].live.add(entry.id)
        for path in sorted(self.hold_dir.glob("*.json")):
            try:
                self.held[path.stem] = json.loads(path.read_text())
            except (OSError, ValueError):
                log.error("event=spool_hold_unreadable path=%s", path)
        self._rotate()
        self._collect()

    def _replay(self, path: Path) -> None:
        number = int(path.stem.split("-")[1])
        seg = _Segment(number, path, path.stat().st_size)
        self._segments[number] = seg
        with path.open("rb") as fh:
            data = fh.read()
        pos, skipped = 0, 0
        while pos + _HEAD.size <= len(data):
            record = self._record_at(data, pos)
            if record is None:
                # A damaged record (bad sector, or the torn tail of a crash): skip to the next record
                # marker rather than giving up on every message after it.
                nxt = data.find(MAGIC, pos + 1)
                skipped += (len(data) if nxt < 0 else nxt) - pos
                pos = len(data) if nxt < 0 else nxt
                continue
            kind, body_at, payload = record
            try:
                self._apply_record(kind, payload, number, body_at)
            except (ValueError, KeyError, TypeError):
                skipped += len(payload)
            pos = body_at + len(payload)
        skipped += max(0, len(data) - pos)  # a tail too short to hold a record header
        if skipped:
            log.warning("event=spool_damaged segment=%s skipped_bytes=%d", path.name, skipped)

    @staticmethod
    def _record_at(data: bytes, pos: int) -> tuple[bytes, int, bytes] | None:
        magic, kind, length, crc = _HEAD.unpack_from(data, pos)
        body_at = pos + _HEAD.size
        if magic != MAGIC or kind not in (MSG, STATE) or body_at + length > len(data):
            return None
        payload = data[body_at : body_at + length]
        return (kind, body_at, payload) if zlib.crc32(payload) == crc else None

    def _apply_record(self, kind: bytes, payload: bytes, number: int, body_at: int) -> None:
        if kind == MSG:
            head, _, raw = payload.partition(b"\n")
            env = json.loads(head)
            entry = Entry(
                id=env["id"],
                mail_from=env["mail_from"],
                rcpts=env["rcpts"],
                pending=list(env["rcpts"]),
                received_at=env["received_at"],
                size=len(raw),
                meta=env.get("meta", {}),
                segment=number,
                offset=body_at + len(head) + 1,
                state_segment=number,
            )
            self.entries[entry.id] = entry
            return
        st = json.loads(payload)
        known = self.entries.get(st["id"])
        if known is not None:
            known.pending = st["pending"]
            known.attempts = st["attempts"]
            known.next_attempt = st["next_attempt"]
            known.last_error = st.get("last_error", "")
            known.recorded = st["recorded"]
            known.done = st["done"]
            known.state_segment = number

    def close(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)
            os.close(self._fd)
            self._fd = -1
        for fd in self._readers.values():
            os.close(fd)
        self._readers.clear()
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # -- writing ------------------------------------------------------------------------------

    def _rotate(self) -> None:
        if self._fd >= 0:
            os.fdatasync(self._fd)
            os.close(self._fd)
        number = max(self._segments, default=0) + 1
        path = self.log_dir / f"seg-{number:06d}.log"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dfd = os.open(self.log_dir, os.O_RDONLY)
        try:
            os.fsync(dfd)  # the new segment's directory entry is durable before anything relies on it
        finally:
            os.close(dfd)
        self._active = _Segment(number, path, 0)
        self._segments[number] = self._active

    def _append(self, kind: bytes, payload: bytes) -> tuple[int, int]:
        assert self._active is not None
        if self._active.size + len(payload) > self.segment_size and self._active.size > 0:
            self._rotate()
            self._collect()
        seg = self._active
        record = _HEAD.pack(MAGIC, kind, len(payload), zlib.crc32(payload)) + payload
        written = os.write(self._fd, record)
        if written != len(record):  # a short write on a regular file means the disk is full
            raise OSError("short write to spool segment")
        offset = seg.size + _HEAD.size
        seg.size += len(record)
        self._written += len(record)
        return seg.number, offset

    def add(
        self,
        mail_from: str,
        rcpts: list[str],
        raw: bytes,
        meta: dict[str, Any] | None = None,
        *,
        gw_id: str | None = None,
    ) -> Entry:
        """Append a message; it is durable once ``await commit()`` returns. Returns its entry."""
        entry = Entry(
            id=gw_id or ids.new_id(),
            mail_from=mail_from,
            rcpts=list(rcpts),
            pending=list(rcpts),
            received_at=time.time(),
            size=len(raw),
            meta=meta or {},
        )
        head = json.dumps(
            {
                "id": entry.id,
                "mail_from": mail_from,
                "rcpts": entry.rcpts,
                "received_at": entry.received_at,
                "meta": entry.meta,
            },
            separators=(",", ":"),
            default=str,
        ).encode()
        number, offset = self._append(MSG, head + b"\n" + raw)
        entry.segment, entry.offset, entry.state_segment = number, offset + len(head) + 1, number
        self.entries[entry.id] = entry
        self._segments[number].live.add(entry.id)
        return entry

    def _append_state(self, entry: Entry) -> None:
        number, _ = self._append(STATE, json.dumps(entry.state(), separators=(",", ":")).encode())
        entry.state_segment = number

    def update(self, entry: Entry) -> None:
        """Persist the entry's new state (durable with the next commit); drop finished segments."""
        self._append_state(entry)
        if entry.finished:
            seg = self._segments.get(entry.segment)
            if seg is not None:
                seg.live.discard(entry.id)
            self.entries.pop(entry.id, None)
            self._collect()

    async def commit(self) -> None:
        """Return once everything appended before the call is on disk (group commit)."""
        target = self._written
        while self._synced < target:
            if self._sync_task is None:
                self._sync_task = asyncio.get_running_loop().create_task(self._sync())
            task = self._sync_task
            await asyncio.shield(task)

    async def _sync(self) -> None:
        try:
            if self.commit_delay:
                await asyncio.sleep(self.commit_delay)  # gather more appends into this sync
            upto, fd = self._written, self._fd
            await asyncio.to_thread(os.fdatasync, fd)
            self._synced = max(self._synced, upto)
        finally:
            self._sync_task = None

    def _collect(self) -> None:
        """Delete non-active segments that hold no live message data."""
        for number in sorted(self._segments):
            seg = self._segments[number]
            if seg is self._active or seg.live:
                continue
            movers = [e for e in self.entries.values() if e.state_segment == number and not e.finished]
            for entry in movers:
                self._append_state(entry)
            if movers:
                os.fdatasync(self._fd)  # the moved states are durable before their old copies vanish
                self._synced = self._written
            self._close_reader(number)
            try:
                seg.path.unlink()
            except FileNotFoundError:
                pass
            del self._segments[number]

    # -- reading ------------------------------------------------------------------------------

    def _close_reader(self, number: int) -> None:
        fd = self._readers.pop(number, None)
        if fd is not None:
            os.close(fd)

    def read(self, entry: Entry) -> bytes:
        """The raw message bytes of a spooled entry."""
        if entry.segment == 0:
            return (self.hold_dir / f"{entry.id}.eml").read_bytes()
        fd = self._readers.get(entry.segment)
        if fd is None:
            fd = os.open(self._segments[entry.segment].path, os.O_RDONLY)
            self._readers[entry.segment] = fd
        return os.pread(fd, entry.size, entry.offset)

    def ready(self, now: float | None = None) -> Iterator[Entry]:
        """Entries with recipients still pending whose next attempt is due."""
        now = time.time() if now is None else now
        for entry in list(self.entries.values()):
            if not entry.done and entry.pending and entry.next_attempt <= now:
                yield entry

    def unrecorded(self) -> list[Entry]:
        return [e for e in self.entries.values() if not e.recorded]

    # -- hold and quarantine (postsuper -h / -H) ------------------------------------------------

    def hold(self, entry: Entry, reason: str, raw: bytes | None = None) -> None:
        """Move a message out of the log into the hold directory (durably), then mark it done there."""
        raw = self.read(entry) if raw is None else raw
        info = {
            "id": entry.id,
            "mail_from": entry.mail_from,
            "rcpts": entry.pending or entry.rcpts,
            "received_at": entry.received_at,
            "reason": reason,
            "size": len(raw),
            "meta": entry.meta,
        }
        _write_durably(self.hold_dir / f"{entry.id}.eml", raw)
        _write_durably(self.hold_dir / f"{entry.id}.json", json.dumps(info, default=str).encode())
        _fsync_dir(self.hold_dir)
        self.held[entry.id] = info
        entry.done = True
        self.update(entry)

    async def release(self, gw_id: str) -> Entry:
        """Put a held message back in the queue: durable in the log before its hold files go."""
        info = self.held[gw_id]
        raw = (self.hold_dir / f"{gw_id}.eml").read_bytes()
        entry = self.add(info["mail_from"], info["rcpts"], raw, dict(info.get("meta") or {}), gw_id=gw_id)
        entry.received_at = info["received_at"]
        entry.recorded = True
        self._append_state(entry)
        await self.commit()
        self.drop_held(gw_id)
        return entry

    def drop_held(self, gw_id: str) -> None:
        self.held.pop(gw_id)
        for suffix in (".json", ".eml"):
            (self.hold_dir / f"{gw_id}{suffix}").unlink(missing_ok=True)
        _fsync_dir(self.hold_dir)

    # -- facts for metrics and the queue CLI -----------------------------------------------------

    def listing(self) -> list[dict[str, Any]]:
        rows = []
        for entry in self.entries.values():
            if entry.done:
                continue
            row = asdict(entry)
            row.pop("meta")
            row["state"] = "deferred" if entry.attempts else "active"
            rows.append(row)
        for info in self.held.values():
            rows.append(
                {
                    "id": info["id"],
                    "mail_from": info["mail_from"],
                    "pending": info["rcpts"],
                    "received_at": info["received_at"],
                    "size": info["size"],
                    "state": "quarantine" if info.get("reason") == "quarantine" else "hold",
                    "last_error": info.get("reason", ""),
                }
            )
        return sorted(rows, key=lambda r: r["received_at"])

    def queue_size(self) -> int:
        return sum(1 for e in self.entries.values() if not e.done and e.pending)

    def oldest_age(self, now: float | None = None) -> float:
        now = time.time() if now is None else now
        ages = [now - e.received_at for e in self.entries.values() if not e.done and e.pending]
        return max(ages, default=0.0)


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
