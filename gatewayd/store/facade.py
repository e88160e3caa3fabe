"""The storage facade: every read and write of metadata goes through ``Store``, as plain records."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from sqlalchemy import Row, Select, Table, delete, exists, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from gatewayd.store import migrate as migrations
from gatewayd.store.changelog import ChangeLog, Op
from gatewayd.store.engine import WRITE, create_engine
from gatewayd.store.records import Change, MailboxEntry, MessageRecord
from gatewayd.store.schema import accounts, changes, feedback, mailbox_entries, message_accounts, messages

log = logging.getLogger(__name__)

# Not overwritten when a message is recorded again: when gatewayd first saw it.
_KEEP_ON_UPDATE = frozenset({"id", "received_at"})


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Store:
    """gatewayd's metadata store on SQLite or PostgreSQL; build it with ``await Store.open(url)``.

    Every account has a modseq (its JMAP state) that every change visible to it raises by one, and a change
    log readable with ``changes_since``. Several gatewayd instances may share one PostgreSQL database.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        """Wrap an engine made by ``Store.open`` (which installs the SQLite connection settings)."""
        self._engine = engine
        self._writer = engine.execution_options(**{WRITE: True})
        self._sqlite = engine.dialect.name == "sqlite"
        # SQLite has one writer at a time anyway; queueing here is cheaper than its busy-wait loop.
        self._write_lock = asyncio.Lock() if self._sqlite else None

    @classmethod
    async def open(
        cls, url: str, *, pool_size: int = 5, migrate: bool = True, schema: str | None = None
    ) -> Store:
        """Connect to ``url`` (``sqlite+aiosqlite:///PATH`` or ``postgresql+asyncpg://...``).

        ``pool_size`` bounds the connections this instance opens; ``migrate`` brings the schema to the newest
        revision first; ``schema`` (PostgreSQL only) puts gatewayd's tables in that existing schema.
        """
        engine = create_engine(url, pool_size=pool_size, schema=schema)
        try:
            if migrate:
                await migrations.upgrade(engine)
        except BaseException:
            await engine.dispose()
            raise
        return cls(engine)

    async def close(self) -> None:
        """Close every pooled connection."""
        await self._engine.dispose()

    async def ping(self) -> bool:
        """True if the database answers a trivial query (for ``/healthz``)."""
        try:
            async with self._engine.connect() as conn:
                await conn.execute(select(1))
        except Exception:
            log.warning("store ping failed", exc_info=True)
            return False
        return True

    # -- messages ---------------------------------------------------------------------------------------

    async def record_messages(self, records: Sequence[MessageRecord]) -> None:
        """Insert or update messages by id, in one transaction, and make each owned by its ``accounts``.

        Each owner's modseq rises once per message, logged as ``created`` the first time the account gets the
        message and ``updated`` after. ``received_at`` keeps the value first recorded.
        """
        if not records:
            return
        # The last record of an id wins (one statement cannot touch a row twice); a fixed row order keeps
        # concurrent writers free of deadlocks.
        by_id = {r.id: r for r in records}
        ordered = [by_id[i] for i in sorted(by_id)]
        now = _now()
        async with self._write() as conn:
            await self._ensure_accounts(conn, {a for r in ordered for a in r.accounts})
            stmt = self._insert(messages)
            stmt = stmt.on_conflict_do_update(
                index_elements=[messages.c.id],
                set_={
                    **{c.name: stmt.excluded[c.name] for c in messages.c if c.name not in _KEEP_ON_UPDATE},
                    "updated_at": now,
                },
            )
            await conn.execute(stmt, [_message_row(r) for r in ordered])
            owners = [(r.id, a) for r in ordered for a in sorted(set(r.accounts))]
            created = await self._own(conn, owners)
            changelog = ChangeLog()
            for message, account in owners:
                op: Op = "created" if (message, account) in created else "updated"
                changelog.add(account, "Email", message, op)
            await changelog.flush(conn)

    async def set_delivery_state(self, ids: Sequence[str], state: str, detail: str = "") -> None:
        """Set the delivery state of messages; each owner gets an ``updated`` change per message."""
        if not ids:
            return
        unique = sorted(set(ids))
        async with self._write() as conn:
            await conn.execute(
                update(messages)
                .where(messages.c.id.in_(unique))
                .values(delivery_state=state, delivery_detail=detail, updated_at=_now())
            )
            owners = await conn.execute(
                select(message_accounts.c.message, message_accounts.c.account)
                .where(message_accounts.c.message.in_(unique))
                .order_by(message_accounts.c.message, message_accounts.c.account)
            )
            changelog = ChangeLog()
            for message, account in owners:
                changelog.add(account, "Email", message, "updated")
            await changelog.flush(conn)

    async def get_message(self, id: str, *, account: str | None = None) -> MessageRecord | None:
        """The message with gatewayd id ``id``; with ``account``, only if that account owns it."""
        found = await self._select_messages(select(messages).where(messages.c.id == id), account)
        return found[0] if found else None

    async def find_by_message_id(self, message_id: str, *, account: str | None = None) -> list[MessageRecord]:
        """Messages with this Message-ID (``<>`` optional), oldest first; with ``account``, only its own."""
        wanted = message_id.strip().strip("<>").strip()
        if not wanted:
            return []
        query = select(messages).where(messages.c.message_id == wanted)
        return await self._select_messages(query.order_by(messages.c.received_at, messages.c.id), account)

    async def query_messages(
        self,
        account: str,
        *,
        limit: int = 50,
        position: int = 0,
        category: str | None = None,
        spam: bool | None = None,
    ) -> list[MessageRecord]:
        """An account's messages, newest first, optionally filtered by category and spam verdict."""
        query = select(messages)
        if category is not None:
            query = query.where(messages.c.category == category)
        if spam is not None:
            query = query.where(messages.c.is_spam == spam)
        query = query.order_by(messages.c.received_at.desc(), messages.c.id.desc())
        query = query.offset(position).limit(limit)
        return await self._select_messages(query, account)

    # -- IMAP mailbox entries and feedback --------------------------------------------------------------

    async def record_mailbox_entry(self, entry: MailboxEntry) -> None:
        """Insert or update where an account's copy of a message lives; the account then owns the message.

        The message must have been recorded first. Raises the account's modseq (an ``Email`` change).
        """
        async with self._write() as conn:
            await self._ensure_accounts(conn, {entry.account})
            stmt = self._insert(mailbox_entries)
            stmt = stmt.on_conflict_do_update(
                index_elements=[
                    mailbox_entries.c.account,
                    mailbox_entries.c.mailbox,
                    mailbox_entries.c.uidvalidity,
                    mailbox_entries.c.uid,
                ],
                set_={"message": stmt.excluded.message, "keywords": stmt.excluded.keywords},
            )
            await conn.execute(
                stmt,
                {
                    "account": entry.account,
                    "mailbox": entry.mailbox,
                    "uidvalidity": entry.uidvalidity,
                    "uid": entry.uid,
                    "message": entry.message,
                    "keywords": list(entry.keywords),
                },
            )
            created = await self._own(conn, [(entry.message, entry.account)])
            changelog = ChangeLog()
            changelog.add(entry.account, "Email", entry.message, "created" if created else "updated")
            await changelog.flush(conn)

    async def get_mailbox_entry(
        self, account: str, mailbox: str, uidvalidity: int, uid: int
    ) -> MailboxEntry | None:
        """The entry at this IMAP position, or ``None``."""
        async with self._engine.connect() as conn:
            row = (
                await conn.execute(
                    select(mailbox_entries.c.message, mailbox_entries.c.keywords).where(
                        mailbox_entries.c.account == account,
                        mailbox_entries.c.mailbox == mailbox,
                        mailbox_entries.c.uidvalidity == uidvalidity,
                        mailbox_entries.c.uid == uid,
                    )
                )
            ).first()
        if row is None:
            return None
        return MailboxEntry(account, mailbox, uidvalidity, uid, row.message, list(row.keywords))

    async def max_uid(self, account: str, mailbox: str, uidvalidity: int) -> int:
        """The highest UID recorded for this mailbox and UIDVALIDITY, 0 if none (where a watcher resumes)."""
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(
                    select(func.max(mailbox_entries.c.uid)).where(
                        mailbox_entries.c.account == account,
                        mailbox_entries.c.mailbox == mailbox,
                        mailbox_entries.c.uidvalidity == uidvalidity,
                    )
                )
            ).scalar()
        return int(value or 0)

    async def record_feedback(self, account: str, message: str, kind: str) -> None:
        """Remember a user's verdict on a message (``notjunk``, ``junk``, ``moved_out_of_junk`` ...)."""
        async with self._write() as conn:
            await conn.execute(
                feedback.insert().values(account=account, message=message, kind=kind, created_at=_now())
            )

    async def feedback_for(self, account: str) -> list[tuple[str, str]]:
        """An account's feedback as ``(message id, kind)``, oldest first."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(feedback.c.message, feedback.c.kind)
                .where(feedback.c.account == account)
                .order_by(feedback.c.id)
            )
            return [(r.message, r.kind) for r in rows]

    # -- state and changes ------------------------------------------------------------------------------

    async def account_state(self, account: str) -> int:
        """The account's current modseq; 0 for an account never seen."""
        async with self._engine.connect() as conn:
            value = (
                await conn.execute(select(accounts.c.modseq).where(accounts.c.name == account))
            ).scalar()
        return int(value or 0)

    async def changes_since(self, account: str, modseq: int, limit: int = 500) -> list[Change]:
        """Changes with a modseq above ``modseq``, oldest first, at most ``limit``."""
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(changes.c.modseq, changes.c.kind, changes.c.object_id, changes.c.op)
                .where(changes.c.account == account, changes.c.modseq > modseq)
                .order_by(changes.c.modseq)
                .limit(limit)
            )
            return [Change(account, r.modseq, r.kind, r.object_id, r.op) for r in rows]

    async def delete_account_data(self, account: str) -> int:
        """Delete-my-data: drop the account's ownerships, mailbox entries, feedback and change log, and the
        messages nobody else owns; returns how many messages were removed.

        The account's modseq is kept and raised, so no client's cached state matches afterwards.
        """
        async with self._write() as conn:
            await self._ensure_accounts(conn, {account})
            mine = select(message_accounts.c.message).where(message_accounts.c.account == account)
            others = exists().where(
                message_accounts.c.message == messages.c.id, message_accounts.c.account != account
            )
            # The cascade removes these messages' ownership rows and mailbox entries.
            removed = await conn.execute(delete(messages).where(messages.c.id.in_(mine), ~others))
            for table in (message_accounts, mailbox_entries, feedback, changes):
                await conn.execute(delete(table).where(table.c.account == account))
            await conn.execute(
                update(accounts).where(accounts.c.name == account).values(modseq=accounts.c.modseq + 1)
            )
            return int(removed.rowcount)

    # -- helpers ----------------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        async with contextlib.AsyncExitStack() as stack:
            if self._write_lock is not None:
                await stack.enter_async_context(self._write_lock)
            conn = await stack.enter_async_context(self._writer.begin())
            yield conn

    def _insert(self, table: Table) -> Any:
        """A dialect INSERT with ON CONFLICT support (both dialects spell it the same way)."""
        return sqlite.insert(table) if self._sqlite else postgresql.insert(table)

    async def _ensure_accounts(self, conn: AsyncConnection, names: Iterable[str]) -> None:
        rows = [{"name": n, "modseq": 0} for n in sorted(set(names))]
        if rows:
            await conn.execute(self._insert(accounts).on_conflict_do_nothing(index_elements=["name"]), rows)

    async def _own(self, conn: AsyncConnection, pairs: Sequence[tuple[str, str]]) -> set[tuple[str, str]]:
        """Add ownership rows (modseq filled in by the change log); returns the pairs that were new."""
        if not pairs:
            return set()
        stmt = (
            self._insert(message_accounts)
            .on_conflict_do_nothing(index_elements=["message", "account"])
            .returning(message_accounts.c.message, message_accounts.c.account)
        )
        rows = [{"message": m, "account": a, "modseq": 0} for m, a in pairs]
        result = await conn.execute(stmt, rows)
        return {(r.message, r.account) for r in result}

    async def _select_messages(self, query: Select[Any], account: str | None) -> list[MessageRecord]:
        if account is not None:
            query = query.where(
                exists().where(
                    message_accounts.c.message == messages.c.id, message_accounts.c.account == account
                )
            )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).all()
            if account is not None:
                return [_message_record(r, [account]) for r in rows]
            owners: dict[str, list[str]] = {r.id: [] for r in rows}
            if owners:
                for message, owner in await conn.execute(
                    select(message_accounts.c.message, message_accounts.c.account)
                    .where(message_accounts.c.message.in_(list(owners)))
                    .order_by(message_accounts.c.account)
                ):
                    owners[message].append(owner)
            return [_message_record(r, owners[r.id]) for r in rows]


def _message_row(record: MessageRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "message_id": record.message_id.strip().strip("<>").strip(),
        "mail_from": record.mail_from,
        "rcpt_to": list(record.rcpt_to),
        "from_addr": record.from_addr,
        "to_addrs": list(record.to_addrs),
        "subject": record.subject,
        "date": record.date,
        "size": record.size,
        "spam_score": record.spam_score,
        "is_spam": record.is_spam,
        "phishing_score": record.phishing_score,
        "is_phishing": record.is_phishing,
        "category": record.category,
        "important": record.important,
        "priority_score": record.priority_score,
        "summary": record.summary,
        "actions": list(record.actions),
        "stage": record.stage,
        "action": record.action,
        "delivery_state": record.delivery_state,
        "delivery_detail": record.delivery_detail,
        "source": record.source,
        "received_at": record.received_at,
        "updated_at": record.updated_at,
    }


def _message_record(row: Row[Any], owners: list[str]) -> MessageRecord:
    fields = row._asdict()
    return MessageRecord(accounts=owners, **fields)
