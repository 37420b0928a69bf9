"""Mailbox sync: Sent copies, incoming replies, automatic replies and bounces.

Revision ID: 5c0b1e2f3a4d
Revises: 5ec0a1b2c3d4
Create Date: 2026-11-30 05:41:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailbeacon.models.base

revision: str = "5c0b1e2f3a4d"
down_revision: str | None = "5ec0a1b2c3d4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = mailbeacon.models.base.UTCDateTime


def upgrade() -> None:
    op.create_table(
        "mailbox_sync_states",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("mailbox_connection_id", sa.Integer(), nullable=False),
        sa.Column("account_key", sa.String(length=700), nullable=False),
        sa.Column("settings_seen_at", Timestamp(timezone=True), nullable=True),
        sa.Column("uidvalidity", sa.BigInteger(), nullable=True),
        sa.Column("last_uid", sa.BigInteger(), nullable=False),
        sa.Column("since", Timestamp(timezone=True), nullable=True),
        sa.Column("first_sync_done", sa.Boolean(), nullable=False),
        sa.Column("stored_count", sa.Integer(), nullable=False),
        sa.Column("last_success_at", Timestamp(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        sa.Column("last_error_at", Timestamp(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp(timezone=True), nullable=True),
        sa.Column("lease_owner", sa.String(length=100), nullable=True),
        sa.Column("lease_until", Timestamp(timezone=True), nullable=True),
        sa.Column("updated_at", Timestamp(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_connection_id"],
            ["mailbox_connections.id"],
            name=op.f("fk_mailbox_sync_states_mailbox_connection_id_mailbox_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mailbox_sync_states")),
        sa.UniqueConstraint(
            "mailbox_connection_id", name=op.f("uq_mailbox_sync_states_mailbox_connection_id")
        ),
    )
    op.create_table(
        "sent_folder_copies",
        sa.Column("id", BigId, nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("mailbox_connection_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", Timestamp(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(length=100), nullable=True),
        sa.Column("claimed_until", Timestamp(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(length=500), nullable=False),
        sa.Column("folder", sa.String(length=255), nullable=False),
        sa.Column("appended_at", Timestamp(timezone=True), nullable=True),
        sa.Column("replaced_count", sa.Integer(), nullable=False),
        sa.Column("created_at", Timestamp(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["mailbox_connection_id"],
            ["mailbox_connections.id"],
            name=op.f("fk_sent_folder_copies_mailbox_connection_id_mailbox_connections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_sent_folder_copies_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sent_folder_copies")),
        sa.UniqueConstraint("message_id", name=op.f("uq_sent_folder_copies_message_id")),
    )
    with op.batch_alter_table("sent_folder_copies", schema=None) as batch_op:
        batch_op.create_index(
            "ix_sent_folder_copies_due", ["status", "next_attempt_at"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_sent_folder_copies_mailbox_connection_id"),
            ["mailbox_connection_id"],
            unique=False,
        )

    op.create_table(
        "received_mail",
        sa.Column("id", BigId, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("message_id", BigId, nullable=False),
        sa.Column("copy_id", BigId, nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=False),
        sa.Column("dedupe_key", sa.String(length=255), nullable=False),
        sa.Column("header_message_id", sa.String(length=500), nullable=False),
        sa.Column("from_address", sa.String(length=320), nullable=False),
        sa.Column("from_name", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=998), nullable=False),
        sa.Column("received_at", Timestamp(timezone=True), nullable=False),
        sa.Column("dated_at", Timestamp(timezone=True), nullable=True),
        sa.Column("new_text", sa.Text(), nullable=False),
        sa.Column("full_text", sa.Text(), nullable=False),
        sa.Column("body_html", sa.Text(), nullable=True),
        sa.Column("bounce_status", sa.String(length=32), nullable=False),
        sa.Column("bounce_diagnostic", sa.String(length=500), nullable=False),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("created_at", Timestamp(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["copy_id"],
            ["recipient_copies.id"],
            name=op.f("fk_received_mail_copy_id_recipient_copies"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["messages.id"],
            name=op.f("fk_received_mail_message_id_messages"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_received_mail_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_received_mail")),
        sa.UniqueConstraint("user_id", "dedupe_key", name=op.f("uq_received_mail_user_id")),
    )
    with op.batch_alter_table("received_mail", schema=None) as batch_op:
        batch_op.create_index("ix_received_mail_copy", ["copy_id"], unique=False)
        batch_op.create_index(
            "ix_received_mail_message_received", ["message_id", "received_at"], unique=False
        )

    # Existing rows get the models' defaults; the server defaults only serve them.
    with op.batch_alter_table("mailbox_connections", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("imap_same_password", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column(
                "replace_provider_copies", sa.Boolean(), nullable=False, server_default=sa.true()
            )
        )

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("reply_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("last_reply_at", Timestamp(timezone=True), nullable=True))
        batch_op.create_index("ix_messages_message_id_header", ["message_id_header"], unique=False)

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.alter_column("copy_id", existing_type=BigId, nullable=True)

    with op.batch_alter_table("recipient_copies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("replied_at", Timestamp(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("reply_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("auto_replied_at", Timestamp(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("bounced_at", Timestamp(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("bounce_status", sa.String(length=32), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("bounce_diagnostic", sa.String(length=500), nullable=False, server_default="")
        )


def downgrade() -> None:
    with op.batch_alter_table("recipient_copies", schema=None) as batch_op:
        batch_op.drop_column("bounce_diagnostic")
        batch_op.drop_column("bounce_status")
        batch_op.drop_column("bounced_at")
        batch_op.drop_column("auto_replied_at")
        batch_op.drop_column("reply_count")
        batch_op.drop_column("replied_at")

    op.execute("DELETE FROM notifications WHERE copy_id IS NULL")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.alter_column("copy_id", existing_type=BigId, nullable=False)

    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_index("ix_messages_message_id_header")
        batch_op.drop_column("last_reply_at")
        batch_op.drop_column("reply_count")

    with op.batch_alter_table("mailbox_connections", schema=None) as batch_op:
        batch_op.drop_column("replace_provider_copies")
        batch_op.drop_column("imap_same_password")

    with op.batch_alter_table("received_mail", schema=None) as batch_op:
        batch_op.drop_index("ix_received_mail_message_received")
        batch_op.drop_index("ix_received_mail_copy")
    op.drop_table("received_mail")

    with op.batch_alter_table("sent_folder_copies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sent_folder_copies_mailbox_connection_id"))
        batch_op.drop_index("ix_sent_folder_copies_due")
    op.drop_table("sent_folder_copies")
    op.drop_table("mailbox_sync_states")
