"""Creates the store's async engine: SQLite pragmas and write locking, the PostgreSQL pool and schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

#: Execution option marking a transaction that writes (SQLite: ``BEGIN IMMEDIATE``).
WRITE = "gatewayd_write"
_BUSY_TIMEOUT_MS = 10_000


def create_engine(url: str, *, pool_size: int, schema: str | None = None) -> AsyncEngine:
    """An engine for ``sqlite+aiosqlite://`` (parent directory created) or ``postgresql+asyncpg://``."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if schema is not None:
            raise ValueError("schema= is for PostgreSQL only")
        database = parsed.database or ""
        if database and database != ":memory:" and not database.startswith("file:"):
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_async_engine(parsed, pool_size=pool_size)
        event.listen(engine.sync_engine, "connect", _sqlite_connect)
        event.listen(engine.sync_engine, "begin", _sqlite_begin)
        return engine
    connect_args: dict[str, Any] = {}
    if schema is not None:
        connect_args["server_settings"] = {"search_path": schema}
    # pool_size is the instance's budget of connections: no overflow beyond it.
    return create_async_engine(parsed, pool_size=pool_size, max_overflow=0, connect_args=connect_args)


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # The driver's own implicit BEGIN is off: _sqlite_begin chooses DEFERRED or IMMEDIATE itself.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    # A writer takes the write lock up front: a deferred transaction that upgrades to writing fails with
    # SQLITE_BUSY at once in WAL mode instead of waiting out busy_timeout.
    immediate = conn.get_execution_options().get(WRITE, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
