"""The metadata store's tables (SQLAlchemy Core); ``migrations/versions`` must create exactly these."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)
from sqlalchemy.types import TypeDecorator

# Explicit constraint names, so that migrations can refer to them on both backends.
metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware datetime stored as UTC; SQLite returns naive values, UTC by construction."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:  # callers should not do this; naive means UTC here
            return value if dialect.name == "sqlite" else value.replace(tzinfo=dt.UTC)
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        assert isinstance(value, dt.datetime)
        return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


accounts = Table(
    "accounts",
    metadata,
    Column("name", String(320), primary_key=True),
    # JMAP state: bumped (under this row's lock) by every change visible to the account.
    Column("modseq", BigInteger, nullable=False, default=0),
)

messages = Table(
    "messages",
    metadata,
    Column("id", String(26), primary_key=True),
    Column("message_id", String(998), nullable=False, index=True),
    Column("mail_from", String(320), nullable=False),
    Column("rcpt_to", JSON, nullable=False),
    Column("from_addr", String(998), nullable=False),
    Column("to_addrs", JSON, nullable=False),
    Column("subject", Text, nullable=False),
    Column("date", UTCDateTime, nullable=True),
    Column("size", BigInteger, nullable=False),
    Column("spam_score", Float, nullable=False),
    Column("is_spam", Boolean, nullable=False),
    Column("phishing_score", Float, nullable=False),
    Column("is_phishing", Boolean, nullable=False),
    Column("category", String(64), nullable=False),
    Column("important", Boolean, nullable=False),
    Column("priority_score", Float, nullable=False),
    Column("summary", Text, nullable=False),
    Column("actions", JSON, nullable=False),
    Column("stage", String(32), nullable=False),
    Column("action", String(32), nullable=False),
    Column("delivery_state", String(32), nullable=False),
    Column("delivery_detail", Text, nullable=False),
    Column("source", String(16), nullable=False),
    Column("received_at", UTCDateTime, nullable=False, index=True),
    Column("updated_at", UTCDateTime, nullable=True),
)

# Ownership: an account sees a message only through a row here.
message_accounts = Table(
    "message_accounts",
    metadata,
    Column("message", String(26), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True),
    Column("account", String(320), primary_key=True),
    Column("modseq", BigInteger, nullable=False),
    Index("ix_message_accounts_account_modseq", "account", "modseq"),
)

mailbox_entries = Table(
    "mailbox_entries",
    metadata,
    Column("account", String(320), primary_key=True),
    Column("mailbox", String(1024), primary_key=True),
    Column("uidvalidity", BigInteger, primary_key=True, autoincrement=False),
    Column("uid", BigInteger, primary_key=True, autoincrement=False),
    Column("message", String(26), ForeignKey("messages.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("keywords", JSON, nullable=False),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("account", String(320), nullable=False, index=True),
    Column("message", String(26), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("created_at", UTCDateTime, nullable=False),
)

changes = Table(
    "changes",
    metadata,
    # The primary key is the unique (account, modseq): two writers can never log the same state twice.
    Column("account", String(320), primary_key=True),
    Column("modseq", BigInteger, primary_key=True, autoincrement=False),
    Column("kind", String(32), nullable=False),
    Column("object_id", String(64), nullable=False),
    Column("op", String(16), nullable=False),
)
