"""Consent and privacy: roles, organisation policy, consent records, audit, erased
addresses, anonymous hits, possibly forwarded opens.

Existing organisations keep tracking as they did (consent not required, no opt-out
footer) until an admin changes their policy; new ones require consent (the models'
defaults). The first user of each organisation becomes its admin.

Revision ID: 7c0a5e9d1b2f
Revises: 5c0b1e2f3a4d
Create Date: 2026-11-30 06:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailbeacon.models.base

revision: str = "7c0a5e9d1b2f"
down_revision: str | None = "5c0b1e2f3a4d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
Timestamp = mailbeacon.models.base.UTCDateTime


def upgrade() -> None:
    # Existing rows get these server defaults; new ones the models' defaults.
    with op.batch_alter_table("organisations", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "tracking_mode", sa.String(length=16), nullable=False, server_default="individual"
            )
        )
        batch_op.add_column(
            sa.Column("consent_required", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("opt_out_footer", sa.Boolean(), nullable=False, server_default=sa.false())
        )
        batch_op.add_column(
            sa.Column("retention_days", sa.Integer(), nullable=False, server_default="395")
        )
        batch_op.add_column(
            sa.Column("store_network", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(
            sa.Column(
                "delete_events_on_withdrawal",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
        batch_op.add_column(
            sa.Column("privacy_contact", sa.String(length=320), nullable=False, server_default="")
        )

    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("role", sa.String(length=16), nullable=False, server_default="member")
        )
    op.execute(
        "UPDATE users SET role = 'admin' WHERE id IN "
        "(SELECT min(id) FROM users GROUP BY organisation_id)"
    )

    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "consent_state", sa.String(length=16), nullable=False, server_default="unknown"
            )
        )
        batch_op.add_column(
            sa.Column("consent_updated_at", Timestamp(timezone=True), nullable=True)
        )

    for table in ("messages", "recipient_copies"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("forwarded_open_count", sa.Integer(), nullable=False, server_default="0")
            )

    with op.batch_alter_table("tracking_events", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("possibly_forwarded", sa.Boolean(), nullable=False, server_default=sa.false())
        )

    op.create_table(
        "consent_records",
        sa.Column("id", BigId, nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("previous_state", sa.String(length=16), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("note", sa.String(length=1000), nullable=False),
        sa.Column("recorded_at", Timestamp(timezone=True), nullable=False),
        sa.Column("given_at", Timestamp(timezone=True), nullable=True),
        sa.Column("recorded_by_user_id", sa.Integer(), nullable=True),
        sa.Column("recorded_by", sa.String(length=320), nullable=False),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=1000), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contacts.id"],
            name=op.f("fk_consent_records_contact_id_contacts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["recorded_by_user_id"],
            ["users.id"],
            name=op.f("fk_consent_records_recorded_by_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consent_records")),
    )
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.create_index(
            "ix_consent_records_contact_at", ["contact_id", "recorded_at"], unique=False
        )

    op.create_table(
        "audit_entries",
        sa.Column("id", BigId, nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("at", Timestamp(timezone=True), nullable=False),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("actor", sa.String(length=320), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("action", sa.String(length=40), nullable=False),
        sa.Column("subject", sa.String(length=320), nullable=False),
        sa.Column("subject_key", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["actor_user_id"],
            ["users.id"],
            name=op.f("fk_audit_entries_actor_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_audit_entries_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_entries")),
    )
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.create_index("ix_audit_entries_org_at", ["organisation_id", "at"], unique=False)
        batch_op.create_index(
            "ix_audit_entries_subject_key", ["organisation_id", "subject_key"], unique=False
        )

    op.create_table(
        "erased_addresses",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("organisation_id", sa.Integer(), nullable=False),
        sa.Column("address_key", sa.String(length=64), nullable=False),
        sa.Column("erased_at", Timestamp(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organisation_id"],
            ["organisations.id"],
            name=op.f("fk_erased_addresses_organisation_id_organisations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_erased_addresses")),
        sa.UniqueConstraint(
            "organisation_id", "address_key", name=op.f("uq_erased_addresses_organisation_id")
        ),
    )

    op.create_table(
        "anonymous_hits",
        sa.Column("uid", sa.String(length=32), nullable=False),
        sa.Column("recorded_at", Timestamp(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("uid", name=op.f("pk_anonymous_hits")),
    )
    with op.batch_alter_table("anonymous_hits", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_anonymous_hits_recorded_at"), ["recorded_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("anonymous_hits", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_anonymous_hits_recorded_at"))
    op.drop_table("anonymous_hits")
    op.drop_table("erased_addresses")
    with op.batch_alter_table("audit_entries", schema=None) as batch_op:
        batch_op.drop_index("ix_audit_entries_subject_key")
        batch_op.drop_index("ix_audit_entries_org_at")
    op.drop_table("audit_entries")
    with op.batch_alter_table("consent_records", schema=None) as batch_op:
        batch_op.drop_index("ix_consent_records_contact_at")
    op.drop_table("consent_records")

    with op.batch_alter_table("tracking_events", schema=None) as batch_op:
        batch_op.drop_column("possibly_forwarded")
    for table in ("recipient_copies", "messages"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_column("forwarded_open_count")
    with op.batch_alter_table("contacts", schema=None) as batch_op:
        batch_op.drop_column("consent_updated_at")
        batch_op.drop_column("consent_state")
    with op.batch_alter_table("users", schema=None) as batch_op:
        batch_op.drop_column("role")
    with op.batch_alter_table("organisations", schema=None) as batch_op:
        for column in (
            "privacy_contact",
            "delete_events_on_withdrawal",
            "store_network",
            "retention_days",
            "opt_out_footer",
            "consent_required",
            "tracking_mode",
        ):
            batch_op.drop_column(column)
