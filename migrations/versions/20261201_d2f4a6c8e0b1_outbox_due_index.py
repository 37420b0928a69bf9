"""PostgreSQL: a partial index of the copies the outbox may claim, in due order.

The outbox worker's `due` scan (mail/queue.py) read the `(status, next_attempt_at)`
index, and PostgreSQL planned it as a bitmap scan. Every copy a send moves on
(queued, reserved, started, settled: a new version of its row each time, the status
indexed) leaves an index entry behind until a vacuum, and a bitmap scan neither skips
dead entries nor marks them: after 9,000 copies sent in one schema (30,819 dead rows,
never vacuumed), each scan for 600 queued copies read 14,538 entries and 325 heap
pages, 1.3-1.5 ms every time. This index holds only copies that are queued and
unreserved, keyed as the scan orders them: the scan walks it in order and stops at
its limit, and an index scan marks the dead entries it meets, which later scans pass
over (0.32 ms the first time, 0.05 ms after, on the same table).

SQLite leaves no dead entries behind (a row is updated in place, and so are its index
entries): nothing changes there.

Built in the migration's transaction (which holds the migration lock, so not
CONCURRENTLY), as the other indexes are: writes to `recipient_copies` wait while the
table is read once. Upgrade with the outbox workers stopped on a large installation.

Revision ID: d2f4a6c8e0b1
Revises: c1e3a5b7d9f2
Create Date: 2026-12-01 00:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "d2f4a6c8e0b1"
down_revision: str | None = "c1e3a5b7d9f2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The expressions mail/queue.py's claims and rounds filter and order by.
_INDEX = (
    "CREATE INDEX ix_recipient_copies_due ON recipient_copies"
    " (coalesce(next_attempt_at, '-infinity'::timestamptz), id)"
    " WHERE status = 'queued' AND claimed_by IS NULL"
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(_INDEX)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql("DROP INDEX IF EXISTS ix_recipient_copies_due")
