"""A copy's bodies move out of ``recipient_copies`` into ``recipient_copy_bodies``.

Every hit stored updates its copy's figures, and every send updates the copy three
times (reserve, start, outcome). SQLite writes a row whole, its overflow pages too,
whenever the row's size changes (a status from ``queued`` to ``sending``, a count
with one digit more): with the bodies in the row (the corpus's median HTML is 16 KB)
each of those updates wrote them into the WAL again. At 16 KB bodies the consumer
stored 4,485 hits/s where it stored 9,096 with empty ones (bench/consumer.py
``--body-bytes``). PostgreSQL writes a new version of the row on each update too,
with a body that compresses under its TOAST threshold inline.

The bodies are written once, when a send is planned, and read by the outbox worker
when it claims or reserves a copy. A copy with neither body (none is planned so) has
no row. The rows are copied over, then the two columns dropped (SQLite 3.35's own
``DROP COLUMN``, which rewrites the table once).

Revision ID: c1e3a5b7d9f2
Revises: b0e2a4c6d8f1
Create Date: 2026-11-30 21:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c1e3a5b7d9f2"
down_revision: str | None = "b0e2a4c6d8f1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "recipient_copy_bodies",
        sa.Column("copy_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("html_body", sa.Text(), nullable=True),
        sa.Column("text_body", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["copy_id"],
            ["recipient_copies.id"],
            name=op.f("fk_recipient_copy_bodies_copy_id_recipient_copies"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("copy_id", name=op.f("pk_recipient_copy_bodies")),
    )
    op.execute(
        "INSERT INTO recipient_copy_bodies (copy_id, html_body, text_body)"
        " SELECT id, html_body, text_body FROM recipient_copies"
        " WHERE html_body IS NOT NULL OR text_body IS NOT NULL"
    )
    for column in ("html_body", "text_body"):
        # Alembic's drop_column on SQLite wants batch mode, which would rebuild the
        # table (and its triggers and indexes); SQLite's own DROP COLUMN keeps them.
        op.execute(f"ALTER TABLE recipient_copies DROP COLUMN {column}")


def downgrade() -> None:
    op.add_column("recipient_copies", sa.Column("html_body", sa.Text(), nullable=True))
    op.add_column("recipient_copies", sa.Column("text_body", sa.Text(), nullable=True))
    op.execute(
        "UPDATE recipient_copies SET"
        " html_body = (SELECT b.html_body FROM recipient_copy_bodies AS b"
        " WHERE b.copy_id = recipient_copies.id),"
        " text_body = (SELECT b.text_body FROM recipient_copy_bodies AS b"
        " WHERE b.copy_id = recipient_copies.id)"
    )
    op.drop_table("recipient_copy_bodies")
