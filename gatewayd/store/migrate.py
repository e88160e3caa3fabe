"""Brings a database to the newest schema with Alembic, on gatewayd's own async engine (no sync driver)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from gatewayd.store.engine import WRITE
from gatewayd.store.schema import metadata

# Relative to this file, so that an installed (non-editable) package finds its migrations too.
MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x67617465  # "gate": the advisory lock that serialises migrations on PostgreSQL


def alembic_config() -> Config:
    """An Alembic config pointing at the packaged migrations; it does not read ``alembic.ini``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


def _upgrade(connection: Connection, revision: str) -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Apply every migration not yet applied, in one transaction; a no-op on an up-to-date database."""
    # The write option makes SQLite take its write lock at BEGIN; PostgreSQL instances starting together
    # queue on an advisory lock, so only the first one migrates.
    async with engine.execution_options(**{WRITE: True}).begin() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEY})
        await connection.run_sync(_upgrade, revision)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


async def current(engine: AsyncEngine) -> str | None:
    """The revision the database is at, or ``None`` for an empty database."""
    async with engine.connect() as connection:
        return await connection.run_sync(_current)


def _diff(connection: Connection) -> list[Any]:
    return list(compare_metadata(MigrationContext.configure(connection), metadata))


async def schema_diff(engine: AsyncEngine) -> list[Any]:
    """How the database differs from ``schema.py`` (Alembic autogenerate terms); empty when they match."""
    async with engine.connect() as connection:
        return await connection.run_sync(_diff)
