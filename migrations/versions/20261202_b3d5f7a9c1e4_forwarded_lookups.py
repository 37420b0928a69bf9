"""The forwarded-open check's lookups, each the first entry of an index range.

The check (privacy/forwarding.py) read, for every copy a batch opens, each (network
prefix, agent) its human opens had come from, through `ix_tracking_events_human_sources`:
as many rows as the copy had sources, so that a batch's cost grew with its copies'
history. Replaying a million hits into PostgreSQL (tables analysed), the check took 58
ms a batch of 20,000 in the first fifth, 212 ms in the middle and 429 ms in the last.
It now asks only what the rule needs of each of the batch's opens: when the copy's
first human open came (`ix_tracking_events_copy_time`), and when its human opens first
came from the open's network and from its agent: the first entry of a range of one of
the two indexes below (125, 169 and 189 ms in the same fifths). Their condition is the
query's, written out the same way.

Both lead with the copy. PostgreSQL takes a partial index built on an empty table for
an empty one until the table is first analysed (autovacuum does it as the table grows),
and may then pick either for any lookup: with the copy first, a wrong pick reads that
copy's opens (300 ms a batch near the end of that replay, as the old query did); with
the network or agent first, it walked a whole index for every copy (8.5 s a batch).

Built in the migration's transaction (which holds the migration lock, so not
CONCURRENTLY), as the other indexes are: hits wait in the journal while
`tracking_events` is read once. Upgrade with the consumers stopped on a large
installation. Agents fit: migration e4a6c8f0b2d3 cut those longer than
2,000 bytes, as the pipeline does.

Revision ID: b3d5f7a9c1e4
Revises: a1c3e5f7b9d2
Create Date: 2026-12-02 11:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "b3d5f7a9c1e4"
down_revision: str | None = "a1c3e5f7b9d2"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# models.event.HUMAN_SOURCE_OPENS as it is today.
_OPENS = "kind = 'open' AND label = 'human' AND NOT possibly_forwarded"


def upgrade() -> None:
    op.drop_index("ix_tracking_events_human_sources", table_name="tracking_events")
    for name, columns in (
        ("prefixes", ["copy_id", "ip_prefix"]),
        ("agents", ["copy_id", "user_agent"]),
    ):
        op.create_index(
            f"ix_tracking_events_human_{name}",
            "tracking_events",
            [*columns, "occurred_at"],
            postgresql_where=sa.text(_OPENS),
            sqlite_where=sa.text(_OPENS),
        )


def downgrade() -> None:
    for name in ("agents", "prefixes"):
        op.drop_index(f"ix_tracking_events_human_{name}", table_name="tracking_events")
    op.create_index(
        "ix_tracking_events_human_sources",
        "tracking_events",
        ["copy_id", "ip_prefix", "user_agent", "occurred_at"],
        postgresql_where=sa.text(_OPENS),
        sqlite_where=sa.text(_OPENS),
    )
