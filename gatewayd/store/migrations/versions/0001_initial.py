"""Initial schema: accounts with modseq, messages, ownership, mailbox entries, feedback, change log.

Revision ID: 0001
Revises:
Create Date: 2026-11-21
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "accounts",
        sa.Column("name", sa.String(320), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_accounts"),
    )
    op.create_table(
        "messages",
        sa.Column("id", sa.String(26), nullable=False),
        sa.Column("message_id", sa.String(998), nullable=False),
        sa.Column("mail_from", sa.String(320), nullable=False),
        sa.Column("rcpt_to", sa.JSON(), nullable=False),
        sa.Column("from_addr", sa.String(998), nullable=False),
        sa.Column("to_addrs", sa.JSON(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("date", _TS, nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("spam_score", sa.Float(), nullable=False),
        sa.Column("is_spam", sa.Boolean(), nullable=False),
        sa.Column("phishing_score", sa.Float(), nullable=False),
        sa.Column("is_phishing", sa.Boolean(), nullable=False),
        sa.Column("category", sa.String(64), nullable=False),
        sa.Column("important", sa.Boolean(), nullable=False),
        sa.Column("priority_score", sa.Float(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("actions", sa.JSON(), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("delivery_state", sa.String(32), nullable=False),
        sa.Column("delivery_detail", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("received_at", _TS, nullable=False),
        sa.Column("updated_at", _TS, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
    )
    op.create_index("ix_messages_message_id", "messages", ["message_id"])
    op.create_index("ix_messages_received_at", "messages", ["received_at"])
    op.create_table(
        "message_accounts",
        sa.Column("message", sa.String(26), nullable=False),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("modseq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["message"], ["messages.id"], ondelete="CASCADE",
                                name="fk_message_accounts_message_messages"),
        sa.PrimaryKeyConstraint("message", "account", name="pk_message_accounts"),
    )
    op.create_index("ix_message_accounts_account_modseq", "message_accounts", ["account", "modseq"])
    op.create_table(
        "mailbox_entries",
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("mailbox", sa.String(1024), nullable=False),
        sa.Column("uidvalidity", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("uid", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("message", sa.String(26), nullable=False),
        sa.Column("keywords", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["message"], ["messages.id"], ondelete="CASCADE",
                                name="fk_mailbox_entries_message_messages"),
        sa.PrimaryKeyConstraint("account", "mailbox", "uidvalidity", "uid", name="pk_mailbox_entries"),
    )
    op.create_index("ix_mailbox_entries_message", "mailbox_entries", ["message"])
    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("message", sa.String(26), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("created_at", _TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_feedback"),
    )
    op.create_index("ix_feedback_account", "feedback", ["account"])
    op.create_table(
        "changes",
        sa.Column("account", sa.String(320), nullable=False),
        sa.Column("modseq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=False),
        sa.Column("op", sa.String(16), nullable=False),
        sa.PrimaryKeyConstraint("account", "modseq", name="pk_changes"),
    )


def downgrade() -> None:
    op.drop_table("changes")
    op.drop_index("ix_feedback_account", table_name="feedback")
    op.drop_table("feedback")
    op.drop_index("ix_mailbox_entries_message", table_name="mailbox_entries")
    op.drop_table("mailbox_entries")
    op.drop_index("ix_message_accounts_account_modseq", table_name="message_accounts")
    op.drop_table("message_accounts")
    op.drop_index("ix_messages_received_at", table_name="messages")
    op.drop_index("ix_messages_message_id", table_name="messages")
    op.drop_table("messages")
    op.drop_table("accounts")
