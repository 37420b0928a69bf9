"""PostgreSQL: an unlogged table in which each outbox worker keeps a row while its
commits that did not wait for the server's disk are to be trusted.

A worker on PostgreSQL reserves its lanes' next copies in a commit that waits for
the disk, and starts them and writes their outcomes in commits that do not
(``synchronous_commit = off``): those are lost only if the server itself crashes.
The worker's row here says whether it did. PostgreSQL empties unlogged tables
when it recovers from a crash, and only then (a clean shutdown keeps them), so a
row still there means every commit the worker made since writing it is there too;
a row gone means some may not be, and a copy it reserved may have been started by
one of them: it becomes ``unknown``, never sent again (mail/queue.py).

The table is unlogged on purpose, and is not in the models: SQLite has no such
thing (its workers tell a machine crash by the boot id), so it exists on
PostgreSQL only, and ``alembic check`` leaves it out (migrations/env.py).

Revision ID: e7b9d1f3a5c6
Revises: d6a8c0e2f4b5
Create Date: 2026-11-30 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "e7b9d1f3a5c6"
down_revision: str | None = "d6a8c0e2f4b5"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Constraint named as the models' naming convention would name it.
_TABLE = """CREATE UNLOGGED TABLE outbox_crash_markers (
    worker_id varchar(100) NOT NULL,
    CONSTRAINT pk_outbox_crash_markers PRIMARY KEY (worker_id)
)"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(_TABLE)


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql("DROP TABLE IF EXISTS outbox_crash_markers")
