"""The spool keeps every accepted message across restarts and crashes, and frees disk once delivered."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.spool import Spool, SpoolLocked

MB = 1 << 20


def reopen(spool: Spool, **kw: int) -> Spool:
    spool.close()
    again = Spool(spool.root, **kw)
    again.open()
    return again


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    s = Spool(tmp_path / "spool", segment_size=MB)
    s.open()
    yield s
    s.close()


async def test_committed_message_survives_reopen_byte_exact(spool: Spool) -> None:
    raw = b"Subject: hi\r\n\r\nbody \x00\xff\r\n"
    entry = spool.add("a@x.test", ["b@y.test", "c@y.test"], raw, {"id": "meta"})
    await spool.commit()
    spool = reopen(spool)
    again = spool.entries[entry.id]
    assert spool.read(again) == raw
    assert again.pending == ["b@y.test", "c@y.test"]
    assert again.meta == {"id": "meta"}
    spool.close()


async def test_finished_messages_are_forgotten_and_segments_deleted(spool: Spool) -> None:
    entries = [spool.add("a@x.test", ["b@y.test"], os.urandom(300_000)) for _ in range(8)]
    await spool.commit()
    assert len(list(spool.log_dir.glob("seg-*.log"))) > 1
    for entry in entries:
        entry.pending, entry.done, entry.recorded = [], True, True
        spool.update(entry)
    await spool.commit()
    assert len(list(spool.log_dir.glob("seg-*.log"))) == 1  # only the active one
    spool = reopen(spool)
    assert spool.entries == {}
    spool.close()


async def test_state_survives_when_the_segment_holding_it_is_deleted(spool: Spool) -> None:
    slow = spool.add("a@x.test", ["b@y.test"], b"slow")
    await spool.commit()
    slow.attempts, slow.next_attempt, slow.last_error = 3, 1e12, "451 try later"
    spool.update(slow)
    # Fill and finish enough messages that the segment with slow's latest state is deleted.
    for _ in range(8):
        entry = spool.add("a@x.test", ["b@y.test"], os.urandom(300_000))
        entry.pending, entry.done, entry.recorded = [], True, True
        spool.update(entry)
    await spool.commit()
    spool = reopen(spool)
    again = spool.entries[slow.id]
    assert (again.attempts, again.next_attempt, again.last_error) == (3, 1e12, "451 try later")
    assert spool.read(again) == b"slow"
    spool.close()


async def test_torn_tail_is_ignored_and_earlier_messages_kept(spool: Spool) -> None:
    kept = spool.add("a@x.test", ["b@y.test"], b"kept")
    await spool.commit()
    spool.add("a@x.test", ["b@y.test"], b"x" * 1000)
    await spool.commit()
    segment = max(spool.log_dir.glob("seg-*.log"))
    spool.close()
    with segment.open("r+b") as fh:  # a crash in the middle of the last append
        fh.truncate(segment.stat().st_size - 10)
    again = Spool(spool.root)
    again.open()
    assert list(again.entries) == [kept.id]
    assert again.read(again.entries[kept.id]) == b"kept"
    again.close()


async def test_hold_and_release_survive_restart(spool: Spool) -> None:
    entry = spool.add("a@x.test", ["b@y.test"], b"held body")
    await spool.commit()
    spool.hold(entry, "quarantine")
    entry.recorded = True
    spool.update(entry)
    spool = reopen(spool)
    assert entry.id in spool.held and entry.id not in spool.entries
    assert [r["state"] for r in spool.listing()] == ["quarantine"]
    released = await spool.release(entry.id)
    spool = reopen(spool)
    assert spool.read(spool.entries[released.id]) == b"held body"
    assert spool.held == {}
    spool.close()


async def test_second_process_cannot_open_a_locked_spool(spool: Spool) -> None:
    with pytest.raises(SpoolLocked):
        Spool(spool.root).open()


async def test_concurrent_commits_share_fsyncs(spool: Spool, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (calls.append(fd), real(fd)))

    async def one(i: int) -> str:
        entry = spool.add("a@x.test", ["b@y.test"], b"m%d" % i)
        await spool.commit()
        return entry.id

    done = await asyncio.gather(*(one(i) for i in range(50)))
    assert len(set(done)) == 50
    assert 1 <= len(calls) < 50  # group commit: far fewer syncs than messages


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    damage=st.lists(st.tuples(st.integers(0, 10**9), st.binary(min_size=1, max_size=16)), max_size=4),
    cut=st.integers(0, 10**9),
)
def test_damaged_segments_never_stop_the_spool(
    tmp_path_factory: pytest.TempPathFactory, damage: list[tuple[int, bytes]], cut: int
) -> None:
    """Any overwrite or truncation: open() works, and every message whose record was not touched is kept."""
    root = tmp_path_factory.mktemp("spool")
    spool = Spool(root, segment_size=MB)
    spool.open()
    entries = [spool.add("a@x.test", ["b@y.test"], b"message %d\r\n" % i * 20) for i in range(10)]
    asyncio.run(spool.commit())
    spool.close()
    [segment] = list(spool.log_dir.glob("seg-*.log"))
    data = bytearray(segment.read_bytes())
    touched: list[tuple[int, int]] = []
    for at, junk in damage:
        at %= len(data)
        data[at : at + len(junk)] = junk[: len(data) - at]
        touched.append((at, at + len(junk)))
    end = len(data) - cut % (len(data) // 4 + 1)
    del data[end:]
    touched.append((end, 1 << 62))
    segment.write_bytes(bytes(data))

    again = Spool(root)
    again.open()
    try:
        for entry in entries:
            start = entry.offset - 200  # the record header and envelope lie just before the body
            intact = all(b <= start or a >= entry.offset + entry.size for a, b in touched)
            if intact:
                assert again.read(again.entries[entry.id]) == b"message %d\r\n" % entries.index(entry) * 20
    finally:
        again.close()
