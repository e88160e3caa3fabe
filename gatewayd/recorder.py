"""Writes message metadata and delivery states to the store in batches, off the SMTP reply path.

A spooled message is finished only once its metadata is committed, so a crash or a store outage loses no
record: the spool replays unrecorded messages at start and the recorder retries until the store answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
from typing import Any

from gatewayd import metrics
from gatewayd.spool import Entry, Spool
from gatewayd.store.facade import Store
from gatewayd.store.records import MessageRecord

log = logging.getLogger("gatewayd.recorder")
BATCH = 100


_FIELDS = tuple(f.name for f in dataclasses.fields(MessageRecord))


def record_to_json(record: MessageRecord) -> dict[str, Any]:
    # Shallow on purpose (dataclasses.asdict deep-copies every list and dict): json.dumps only reads it.
    out = {name: getattr(record, name) for name in _FIELDS}
    for key in ("date", "received_at", "updated_at"):
        if isinstance(out[key], dt.datetime):
            out[key] = out[key].isoformat()
    return out


def record_from_json(data: dict[str, Any]) -> MessageRecord:
    data = dict(data)
    for key in ("date", "received_at", "updated_at"):
        if isinstance(data.get(key), str):
            data[key] = dt.datetime.fromisoformat(data[key])
    return MessageRecord(**{k: v for k, v in data.items() if k in _FIELDS})


class Recorder:
    def __init__(self, store: Store, spool: Spool | None) -> None:
        self.store = store
        self.spool = spool
        self._records: list[tuple[MessageRecord, Entry | None]] = []
        self._states: dict[tuple[str, str], list[str]] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()

    def record(self, record: MessageRecord, entry: Entry | None) -> None:
        self._records.append((record, entry))
        self._idle.clear()
        self._wake.set()

    def state(self, entry: Entry, state: str, detail: str) -> None:
        """A delivery outcome: recorded for the message (bounces carry no record and are skipped)."""
        if "bounce_of" not in entry.meta:
            self.set_state(entry.id, state, detail)

    def set_state(self, gw_id: str, state: str, detail: str) -> None:
        self._states.setdefault((state, detail), []).append(gw_id)
        self._idle.clear()
        self._wake.set()

    def replay(self) -> int:
        """Queue the records of spooled messages whose metadata never reached the store."""
        assert self.spool is not None
        count = 0
        for entry in self.spool.unrecorded():
            if "id" in entry.meta:
                self.record(record_from_json(entry.meta), entry)
                count += 1
            else:
                entry.recorded = True
                self.spool.update(entry)
        return count

    async def run(self) -> None:
        delay = 0.5
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush_once()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("event=store_error op=record retry_in=%.1f", delay)
                metrics.STORE_ERRORS.labels(op="record").inc()
                await asyncio.sleep(delay)  # back off while the store is down; the work stays queued
                delay = min(delay * 2, 30.0)
                self._wake.set()
                continue
            if self._records or self._states:
                self._wake.set()
            else:
                self._idle.set()

    async def _flush_once(self) -> None:
        batch = self._records[:BATCH]
        if batch:
            await self.store.record_messages([r for r, _ in batch])
            metrics.STORE_BATCH.observe(len(batch))
            del self._records[: len(batch)]
            for _, entry in batch:
                if entry is not None and self.spool is not None:
                    entry.recorded = True
                    self.spool.update(entry)
        if self._states and not self._records:
            states, self._states = self._states, {}
            try:
                for (state, detail), ids in states.items():
                    await self.store.set_delivery_state(ids, state, detail)
            except BaseException:
                for key, ids in states.items():
                    self._states.setdefault(key, []).extend(ids)
                raise

    async def drain(self, timeout: float) -> bool:  # noqa: ASYNC109 - a deadline, not cancellation
        """Wait until everything queued is written; False if the store did not make it in time."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
            return True
        except TimeoutError:
            return False
