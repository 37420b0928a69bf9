"""The human opens' sources per copy, in a partial index of their own.

The forwarded-open check (privacy/forwarding.py) asks, for every copy a batch of hits
opens, where its earlier human opens came from: each (network prefix, agent) with the
time of its first open. It read them through `ix_tracking_events_copy_time`, visiting
the row of every event of those copies (machines' too) and grouping them; the cost
grew with each copy's history. At a million hits into the embedded database, that
query was 46% of the consumer's time (py-spy). This index holds only the opens the
check compares with, keyed as it groups them, so the query reads them in order from
the index alone. Its condition is the query's, written out the same way.

Built in the migration's transaction (which holds the migration lock, so not
CONCURRENTLY), as the other indexes are: hits wait in the journal while
`tracking_events` is read once. Upgrade with the consumers stopped on a large
installation.

Revision ID: e4a6c8f0b2d3
Revises: d2f4a6c8e0b1
Create Date: 2026-12-01 06:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e4a6c8f0b2d3"
down_revision: str | None = "d2f4a6c8e0b1"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# models.event.HUMAN_SOURCE_OPENS as it is today.
_OPENS = "kind = 'open' AND label = 'human' AND NOT possibly_forwarded"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        # An entry of a b-tree index holds at most 2,704 bytes. The edge has always cut
        # agents to 1,000 characters of a header (2,000 bytes at most); one longer came
        # from elsewhere. It is cut to 500 characters (2,000 bytes at most, the bound the
        # pipeline now keeps, tracking.hits), or the index could not be built.
        op.execute(
            "UPDATE tracking_events SET user_agent = left(user_agent, 500)"
            f" WHERE octet_length(user_agent) > 2000 AND {_OPENS}"
        )
    op.create_index(
        "ix_tracking_events_human_sources",
        "tracking_events",
        ["copy_id", "ip_prefix", "user_agent", "occurred_at"],
        postgresql_where=sa.text(_OPENS),
        sqlite_where=sa.text(_OPENS),
    )


def downgrade() -> None:
    op.drop_index("ix_tracking_events_human_sources", table_name="tracking_events")
