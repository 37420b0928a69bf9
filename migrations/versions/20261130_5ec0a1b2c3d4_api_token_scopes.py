"""API token scopes and expiry; sign-in throttled per account and network (security review).

Tokens minted before scopes existed get ``read send``: what scripts used the JSON
API for, without the power over Settings and other tokens they had by accident.
Failed sign-ins counted per email (the lockout) are dropped: throttling now
counts per account and network under other keys.

Revision ID: 5ec0a1b2c3d4
Revises: c22e2403f042
Create Date: 2026-11-30 05:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import mailbeacon.models.base

revision: str = "5ec0a1b2c3d4"
down_revision: str | None = "c22e2403f042"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("scopes", sa.String(length=100), server_default="read send", nullable=False)
        )
        batch_op.add_column(
            sa.Column(
                "expires_at", mailbeacon.models.base.UTCDateTime(timezone=True), nullable=True
            )
        )
    op.execute("DELETE FROM sign_in_attempts WHERE key LIKE 'email:%'")


def downgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_column("expires_at")
        batch_op.drop_column("scopes")
