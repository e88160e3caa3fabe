"""The change log: turns one write transaction's changes into per-account modseqs and ``changes`` rows."""

from __future__ import annotations

from typing import Literal

from sqlalchemy import bindparam, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gatewayd.store.schema import accounts, changes, message_accounts

Op = Literal["created", "updated", "destroyed"]


class ChangeLog:
    """Changes made in one write transaction; ``flush`` numbers them and logs them before it commits."""

    def __init__(self) -> None:
        self._by_account: dict[str, list[tuple[str, str, Op]]] = {}

    def add(self, account: str, kind: str, object_id: str, op: Op) -> None:
        self._by_account.setdefault(account, []).append((kind, object_id, op))

    async def flush(self, conn: AsyncConnection) -> None:
        """Raise each account's modseq by its number of changes and write them to ``changes``."""
        # Accounts are locked in sorted order, after every other row the transaction touches, so that two
        # writers cannot deadlock; the row lock taken by UPDATE serialises modseqs across instances.
        for account in sorted(self._by_account):
            entries = self._by_account[account]
            top = (
                await conn.execute(
                    update(accounts)
                    .where(accounts.c.name == account)
                    .values(modseq=accounts.c.modseq + len(entries))
                    .returning(accounts.c.modseq)
                )
            ).scalar_one()
            first = top - len(entries) + 1
            rows = [
                {"account": account, "modseq": first + i, "kind": kind, "object_id": object_id, "op": op}
                for i, (kind, object_id, op) in enumerate(entries)
            ]
            await conn.execute(changes.insert(), rows)
            latest = {r["object_id"]: r["modseq"] for r in rows if r["kind"] == "Email"}
            if latest:
                await conn.execute(
                    update(message_accounts)
                    .where(message_accounts.c.message == bindparam("b_message"))
                    .where(message_accounts.c.account == account)
                    .values(modseq=bindparam("b_modseq")),
                    [{"b_message": m, "b_modseq": s} for m, s in sorted(latest.items())],
                )
        self._by_account.clear()
