"""The storage facade, the same tests on SQLite and on a real PostgreSQL (``GATEWAYD_TEST_PG_URL``)."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gatewayd.store import migrate
from gatewayd.store.facade import Store
from gatewayd.store.records import MailboxEntry, MessageRecord

Opener = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """A function that opens a Store on a fresh, empty database (a new SQLite file or a new PG schema)."""
    opened: list[Store] = []
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/sub/dir/gatewayd.db"  # the parent directories do not exist yet
        extra: dict[str, Any] = {}
        drop: Callable[[], Awaitable[None]] | None = None
    else:
        url = request.getfixturevalue("pg_url")  # conftest: fails, never skips, if unset
        dsn = url.replace("postgresql+asyncpg://", "postgresql://", 1)
        schema = f"gw_test_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(dsn)
        try:
            await admin.execute(f'CREATE SCHEMA "{schema}"')
        finally:
            await admin.close()
        extra = {"schema": schema}

        async def drop_schema() -> None:
            admin = await asyncpg.connect(dsn)
            try:
                await admin.execute(f'DROP SCHEMA "{schema}" CASCADE')
            finally:
                await admin.close()

        drop = drop_schema

    async def opener(**kwargs: Any) -> Store:
        store = await Store.open(url, **extra, **kwargs)
        opened.append(store)
        return store

    try:
        yield opener
    finally:
        for store in opened:
            await store.close()
        if drop is not None:
            await drop()


@pytest.fixture
async def store(open_store: Opener) -> Store:
    return await open_store()


def msg(n: int, *accounts: str, **fields: Any) -> MessageRecord:
    fields.setdefault("received_at", dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(minutes=n))
    return MessageRecord(id=f"01J{n:023d}", message_id=f"m{n}@example.org", accounts=list(accounts), **fields)


async def test_record_twice_is_one_message(store: Store) -> None:
    record = msg(1, "alice@example.org", subject="hello", rcpt_to=["alice@example.org"],
                 actions=[{"text": "reply", "due": None}], spam_score=1.5)
    await store.record_messages([record])
    await store.record_messages([record])

    got = await store.get_message(record.id)
    assert got is not None and got.updated_at is not None
    assert dataclasses.replace(got, updated_at=None) == record
    assert len(await store.find_by_message_id("m1@example.org")) == 1
    assert len(await store.query_messages("alice@example.org")) == 1
    ops = [(c.object_id, c.op) for c in await store.changes_since("alice@example.org", 0)]
    assert ops == [(record.id, "created"), (record.id, "updated")]


async def test_update_replaces_fields_but_keeps_received_at(store: Store) -> None:
    first = msg(1, "alice@example.org", subject="v1")
    await store.record_messages([first])
    second = msg(1, "alice@example.org", subject="v2", is_spam=True,
                 received_at=first.received_at + dt.timedelta(days=1))
    await store.record_messages([second])
    got = await store.get_message(first.id)
    assert got is not None
    assert (got.subject, got.is_spam, got.received_at) == ("v2", True, first.received_at)
    assert got.updated_at is not None


async def test_modseq_increases_per_account_independently(store: Store) -> None:
    assert await store.account_state("alice@example.org") == 0
    await store.record_messages([msg(1, "alice@example.org")])
    await store.record_messages([msg(2, "alice@example.org", "bob@example.org")])
    await store.record_messages([msg(3, "alice@example.org")])
    assert await store.account_state("alice@example.org") == 3
    assert await store.account_state("bob@example.org") == 1
    assert await store.account_state("carol@example.org") == 0
    assert [c.modseq for c in await store.changes_since("alice@example.org", 0)] == [1, 2, 3]
    assert [c.modseq for c in await store.changes_since("bob@example.org", 0)] == [1]


async def test_changes_since_returns_exactly_the_new_changes(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org"), msg(2, "alice@example.org")])
    state = await store.account_state("alice@example.org")
    assert await store.changes_since("alice@example.org", state) == []

    await store.record_messages([msg(3, "alice@example.org")])
    await store.set_delivery_state([msg(1).id], "delivered", "250 ok")
    new = await store.changes_since("alice@example.org", state)
    assert [(c.modseq, c.kind, c.object_id, c.op) for c in new] == [
        (state + 1, "Email", msg(3).id, "created"),
        (state + 2, "Email", msg(1).id, "updated"),
    ]
    assert await store.account_state("alice@example.org") == state + 2
    assert len(await store.changes_since("alice@example.org", 0, limit=2)) == 2


async def test_set_delivery_state(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org", "bob@example.org"), msg(2, "alice@example.org")])
    await store.set_delivery_state([msg(1).id, msg(2).id, msg(1).id], "deferred", "451 try later")
    for n in (1, 2):
        got = await store.get_message(msg(n).id)
        assert got is not None
        assert (got.delivery_state, got.delivery_detail) == ("deferred", "451 try later")
    assert await store.account_state("alice@example.org") == 4
    assert await store.account_state("bob@example.org") == 2
    await store.set_delivery_state([], "delivered")


async def test_ownership_isolation(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org"), msg(2, "bob@example.org")])
    alice_id = msg(1).id

    assert await store.get_message(alice_id, account="bob@example.org") is None
    mine = await store.get_message(alice_id, account="alice@example.org")
    assert mine is not None and mine.accounts == ["alice@example.org"]
    assert await store.find_by_message_id("<m1@example.org>", account="bob@example.org") == []
    found = await store.find_by_message_id("<m1@example.org>", account="alice@example.org")
    assert [m.id for m in found] == [alice_id]
    assert [m.id for m in await store.query_messages("bob@example.org")] == [msg(2).id]

    # A shared message is visible to both, and each sees only itself as owner.
    await store.record_messages([msg(3, "alice@example.org", "bob@example.org")])
    shared = await store.get_message(msg(3).id, account="bob@example.org")
    assert shared is not None and shared.accounts == ["bob@example.org"]
    unscoped = await store.get_message(msg(3).id)
    assert unscoped is not None and unscoped.accounts == ["alice@example.org", "bob@example.org"]


async def test_query_messages_newest_first_with_filters(store: Store) -> None:
    await store.record_messages([
        msg(1, "alice@example.org", category="newsletter"),
        msg(2, "alice@example.org", is_spam=True),
        msg(3, "alice@example.org"),
        msg(4, "alice@example.org", category="newsletter"),
    ])
    ids = [m.id for m in await store.query_messages("alice@example.org")]
    assert ids == [msg(n).id for n in (4, 3, 2, 1)]
    assert [m.id for m in await store.query_messages("alice@example.org", limit=2, position=1)] == [
        msg(3).id, msg(2).id
    ]
    assert [m.id for m in await store.query_messages("alice@example.org", category="newsletter")] == [
        msg(4).id, msg(1).id
    ]
    assert [m.id for m in await store.query_messages("alice@example.org", spam=True)] == [msg(2).id]
    assert len(await store.query_messages("alice@example.org", spam=False)) == 3


async def test_concurrent_writers_get_distinct_gap_free_modseqs(open_store: Opener) -> None:
    # Two Store instances on the same database stand for two gatewayd processes.
    first, second = await open_store(), await open_store()
    await asyncio.gather(*(
        (first if n % 2 else second).record_messages([msg(n, "alice@example.org", f"user{n}@example.org")])
        for n in range(20)
    ))
    log = await first.changes_since("alice@example.org", 0)
    assert [c.modseq for c in log] == list(range(1, 21))
    assert {c.object_id for c in log} == {msg(n).id for n in range(20)}
    assert await second.account_state("alice@example.org") == 20

    # Concurrent batches that overlap (same messages, same account) stay consistent too.
    await asyncio.gather(*(
        (first if n % 2 else second).record_messages([msg(k, "alice@example.org") for k in range(n, n + 5)])
        for n in range(10)
    ))
    log = await first.changes_since("alice@example.org", 20, limit=1000)
    assert [c.modseq for c in log] == list(range(21, 71))
    assert all(c.op == "updated" for c in log)
    assert len(await first.query_messages("alice@example.org", limit=100)) == 20


async def test_mailbox_entries_and_max_uid(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org"), msg(2, "alice@example.org")])
    assert await store.max_uid("alice@example.org", "INBOX", 7) == 0
    assert await store.get_mailbox_entry("alice@example.org", "INBOX", 7, 10) is None

    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "INBOX", 7, 10, msg(1).id, ["$Junk"]))
    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "INBOX", 7, 12, msg(2).id))
    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "INBOX", 8, 99, msg(2).id))
    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "Junk", 7, 500, msg(2).id))
    state = await store.account_state("alice@example.org")
    # Keywords change in place.
    await store.record_mailbox_entry(
        MailboxEntry("alice@example.org", "INBOX", 7, 10, msg(1).id, ["$Junk", "$Phishing"])
    )

    assert await store.max_uid("alice@example.org", "INBOX", 7) == 12
    assert await store.max_uid("alice@example.org", "INBOX", 8) == 99
    assert await store.max_uid("bob@example.org", "INBOX", 7) == 0
    assert await store.get_mailbox_entry("alice@example.org", "INBOX", 7, 10) == MailboxEntry(
        "alice@example.org", "INBOX", 7, 10, msg(1).id, ["$Junk", "$Phishing"]
    )
    assert [(c.object_id, c.op) for c in await store.changes_since("alice@example.org", state)] == [
        (msg(1).id, "updated")
    ]


async def test_mailbox_entry_gives_ownership(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org")])
    await store.record_mailbox_entry(MailboxEntry("bob@example.org", "INBOX", 1, 1, msg(1).id))
    assert await store.get_message(msg(1).id, account="bob@example.org") is not None
    assert [c.op for c in await store.changes_since("bob@example.org", 0)] == ["created"]


async def test_feedback(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org"), msg(2, "alice@example.org")])
    await store.record_feedback("alice@example.org", msg(1).id, "notjunk")
    await store.record_feedback("alice@example.org", msg(2).id, "moved_out_of_junk")
    await store.record_feedback("bob@example.org", msg(2).id, "junk")
    assert await store.feedback_for("alice@example.org") == [
        (msg(1).id, "notjunk"), (msg(2).id, "moved_out_of_junk")
    ]
    assert await store.feedback_for("bob@example.org") == [(msg(2).id, "junk")]
    assert await store.feedback_for("carol@example.org") == []


async def test_delete_account_data(store: Store) -> None:
    await store.record_messages([msg(1, "alice@example.org"), msg(2, "alice@example.org", "bob@example.org"),
                                 msg(3, "bob@example.org")])
    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "INBOX", 1, 1, msg(1).id))
    await store.record_mailbox_entry(MailboxEntry("alice@example.org", "INBOX", 1, 2, msg(2).id))
    await store.record_mailbox_entry(MailboxEntry("bob@example.org", "INBOX", 1, 1, msg(2).id))
    await store.record_feedback("alice@example.org", msg(1).id, "junk")
    before = await store.account_state("alice@example.org")

    assert await store.delete_account_data("alice@example.org") == 1  # msg 2 is still bob's

    assert await store.get_message(msg(1).id) is None
    shared = await store.get_message(msg(2).id)
    assert shared is not None and shared.accounts == ["bob@example.org"]
    assert await store.query_messages("alice@example.org") == []
    assert await store.find_by_message_id("m2@example.org", account="alice@example.org") == []
    assert await store.max_uid("alice@example.org", "INBOX", 1) == 0
    assert await store.feedback_for("alice@example.org") == []
    assert await store.changes_since("alice@example.org", 0) == []
    assert await store.account_state("alice@example.org") > before  # no client's cached state matches
    # bob is untouched.
    assert len(await store.query_messages("bob@example.org")) == 2
    assert await store.max_uid("bob@example.org", "INBOX", 1) == 1
    assert len(await store.changes_since("bob@example.org", 0)) == 3
    assert await store.delete_account_data("nobody@example.org") == 0


async def test_migrations_twice_are_a_no_op_and_match_schema(open_store: Opener) -> None:
    store = await open_store()
    await store.record_messages([msg(1, "alice@example.org")])
    again = await open_store()  # migrates again
    await migrate.upgrade(again._engine)
    assert await migrate.current(again._engine) == "0001"
    assert await migrate.schema_diff(again._engine) == []
    assert await again.get_message(msg(1).id) is not None
    assert await again.ping()


async def test_open_without_migrate_on_empty_database(open_store: Opener) -> None:
    store = await open_store(migrate=False)
    assert await migrate.current(store._engine) is None
    assert await store.ping()


async def test_datetimes_round_trip_timezone_aware(store: Store) -> None:
    plus2 = dt.timezone(dt.timedelta(hours=2))
    date = dt.datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=plus2)
    received = dt.datetime(2026, 3, 29, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    await store.record_messages([msg(1, "alice@example.org", date=date, received_at=received)])
    got = await store.get_message(msg(1).id)
    assert got is not None and got.date is not None
    assert got.date == date and got.received_at == received
    assert got.date.utcoffset() == dt.timedelta(0) and got.received_at.utcoffset() == dt.timedelta(0)
    assert got.date.hour == 23  # stored in UTC


async def test_batch_of_100_in_one_call(store: Store) -> None:
    batch = [msg(n, "alice@example.org", f"u{n % 3}@example.org", subject=f"s{n}") for n in range(100)]
    await store.record_messages(batch)
    assert await store.account_state("alice@example.org") == 100
    assert await store.account_state("u0@example.org") == 34
    listed = await store.query_messages("alice@example.org", limit=200)
    assert [m.id for m in listed] == [r.id for r in reversed(batch)]
    assert [c.modseq for c in await store.changes_since("alice@example.org", 0)] == list(range(1, 101))
    await store.record_messages(batch)  # again: all updates, still 100 messages
    assert await store.account_state("alice@example.org") == 200
    assert len(await store.query_messages("alice@example.org", limit=200)) == 100
