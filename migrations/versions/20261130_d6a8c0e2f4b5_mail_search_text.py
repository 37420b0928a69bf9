"""PostgreSQL: the Mail tab's search reads a narrow, lowered copy of each email's
searched text instead of the emails themselves.

``messages_search_text`` holds, per email, its owner, whether it is a preview and
``lower(subject || ' ' || to_header || ' ' || cc_header)``: the very expression
the search matched on ``messages`` (mail/reading.py), so the results do not
change. A trigger on ``messages`` keeps it in step (inserts, COPY included, and
updates of those columns; the figures the hit pipeline updates all the time do
not fire it), and deletes cascade.

Why a table and not only an index: a search of one or two characters has no
trigram, so no index can answer it and it scans the sender's emails. Scanning
``messages`` (the bodies live there) and lowering three columns per row took
about 100 ms at 100,000 emails; this table is a third of the size and already
lowered, and scans in about a fifth of that (bench/README.md). Its column also
has statistics of its own: on the expression the planner guessed a handful of
rows for a term every email matches, and read every match from the index; it
now sees the term is common and scans until it has enough.

The trigram index moves here from ``messages`` (``messages_search_trgm`` is
dropped, and comes back on downgrade). Where pg_trgm is missing (migration
a3d5f7b9c1e2), the table is created all the same and searches scan it.

SQLite is left as it is: the FTS5 trigram table of a3d5f7b9c1e2 serves its search.

Revision ID: d6a8c0e2f4b5
Revises: c5f7b9d1e3a4
Create Date: 2026-11-30 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "d6a8c0e2f4b5"
down_revision: str | None = "c5f7b9d1e3a4"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The expression mail/reading.py matched on messages before this revision (written out
# again in the trigger, on NEW).
_HEADERS = "lower(subject || ' ' || to_header || ' ' || cc_header)"

# Constraints named as the models' naming convention would name them.
_TABLE = """CREATE TABLE messages_search_text (
    message_id bigint NOT NULL,
    user_id integer,
    is_preview boolean NOT NULL,
    search_text text NOT NULL,
    CONSTRAINT pk_messages_search_text PRIMARY KEY (message_id),
    CONSTRAINT fk_messages_search_text_message_id_messages FOREIGN KEY (message_id)
        REFERENCES messages (id) ON DELETE CASCADE
)"""
_FUNCTION = """CREATE FUNCTION messages_search_text_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_search_text (message_id, user_id, is_preview, search_text)
    VALUES (NEW.id, NEW.user_id, NEW.is_preview,
            lower(NEW.subject || ' ' || NEW.to_header || ' ' || NEW.cc_header))
    ON CONFLICT (message_id) DO UPDATE SET
        user_id = EXCLUDED.user_id,
        is_preview = EXCLUDED.is_preview,
        search_text = EXCLUDED.search_text;
    RETURN NULL;
END
$$"""
_TRIGGER = """CREATE TRIGGER messages_search_text_sync
AFTER INSERT OR UPDATE OF subject, to_header, cc_header, user_id, is_preview ON messages
FOR EACH ROW EXECUTE FUNCTION messages_search_text_sync()"""


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    bind.exec_driver_sql(_TABLE)
    bind.exec_driver_sql(_FUNCTION)
    bind.exec_driver_sql(_TRIGGER)
    # The emails already there, before the index: one bulk build beats row by row.
    bind.exec_driver_sql(
        "INSERT INTO messages_search_text (message_id, user_id, is_preview, search_text) "
        "SELECT id, user_id, is_preview, lower(subject || ' ' || to_header || ' ' || cc_header) "
        "FROM messages"
    )
    ops = _trgm_ops(bind)
    if ops is not None:
        bind.exec_driver_sql(
            f"CREATE INDEX messages_search_text_trgm ON messages_search_text "
            f"USING gin (search_text {ops})"
        )
    bind.exec_driver_sql("DROP INDEX IF EXISTS messages_search_trgm")
    # Statistics now, not at autovacuum's leisure: the planner's choice between the
    # index and a scan that stops early rests on them.
    bind.exec_driver_sql("ANALYZE messages_search_text")


def _trgm_ops(bind: sa.Connection) -> str | None:
    """pg_trgm's GIN operator class, named with its schema (see a3d5f7b9c1e2), or None."""
    schema = bind.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).scalar()
    return f'"{schema}".gin_trgm_ops' if schema is not None else None


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    ops = _trgm_ops(bind)
    if ops is not None:
        bind.exec_driver_sql(
            "CREATE INDEX IF NOT EXISTS messages_search_trgm ON messages "
            f"USING gin ({_HEADERS} {ops})"
        )
    bind.exec_driver_sql("DROP TRIGGER IF EXISTS messages_search_text_sync ON messages")
    bind.exec_driver_sql("DROP FUNCTION IF EXISTS messages_search_text_sync()")
    bind.exec_driver_sql("DROP TABLE IF EXISTS messages_search_text")
