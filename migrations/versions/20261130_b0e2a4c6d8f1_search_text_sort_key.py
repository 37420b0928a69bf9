"""The Mail tab's search walks the newest emails on ``messages_search_text`` itself.

A term with more than 1,000 matches (mail/reading.py's ``SEARCH_CANDIDATES``) is not
looked up through its matches: the page walks the sender's emails newest first until
it is full. That walk read ``messages`` (the bodies live there) with a LIKE per row,
and a term whose matches are all old (``proposal 1`` in bench/README.md: over 10,000
matches, all among the oldest fifth) walked some 80,000 of them: about 100 ms in SQL
alone at 100,000 emails. The copy now holds the list's sort key, ``created_at``
(the list orders by ``created_at DESC, id DESC``), so the walk goes over the narrow
copy in the list's order, stops at the page's size, and reads ``messages`` only for
the page's rows.

The triggers keep the key as they keep the text: on inserts, and on updates of
``created_at`` too.

- SQLite: the table is rebuilt with the primary key ``(user_id, created_at,
  message_id)``, WITHOUT ROWID (f8c0e2a4b6d7 keyed it by ``(user_id, message_id)``):
  the walk is one range of the table in the list's order. The re-check of FTS5's
  candidates (a3d5f7b9c1e2), one seek per candidate, goes through a unique index on
  ``message_id``; the triggers find a row by its whole key. A later migration that
  recreates ``messages`` (batch mode) must create these triggers again
  (``_sqlite_triggers(sorted_=True)``), not f8c0e2a4b6d7's.
- PostgreSQL: a column, filled from ``messages`` while writes to ``messages`` wait
  (as in a9d1f3b5c7e9, so no copy is written without it), and an index on
  ``(user_id, created_at DESC, message_id DESC)``. The filling rewrites every row;
  the old versions stay until VACUUM (or autovacuum) removes them.

Revision ID: b0e2a4c6d8f1
Revises: a9d1f3b5c7e9
Create Date: 2026-11-30 17:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "b0e2a4c6d8f1"
down_revision: str | None = "a9d1f3b5c7e9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The only text put into the SQL below (hence its noqa: S608): these constants and
# column prefixes, never input.

# ------------------------------------------------------------------ SQLite

_SQLITE_TRIGGER_NAMES = (
    "messages_search_text_insert",
    "messages_search_text_update",
    "messages_search_text_delete",
)


def _sqlite_table(sorted_: bool) -> str:
    column, key = ("\n    created_at DATETIME NOT NULL,", "created_at, ") if sorted_ else ("", "")
    return f"""CREATE TABLE messages_search_text (
    user_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    is_preview BOOLEAN NOT NULL,
    search_text TEXT NOT NULL,{column}
    CONSTRAINT pk_messages_search_text PRIMARY KEY (user_id, {key}message_id)
) WITHOUT ROWID"""


def _sqlite_text(row: str) -> str:
    return f"lower({row}subject || char(10) || {row}to_header || char(10) || {row}cc_header)"


def _sqlite_copy(row: str, source: str, sorted_: bool) -> str:
    """The copies of the emails with an owner: the trigger's row (``new.``), or every
    row of ``source`` (f8c0e2a4b6d7's, with the sort key if ``sorted_``)."""
    key_column, key_value = (", created_at", f", {row}created_at") if sorted_ else ("", "")
    return (
        f"INSERT INTO messages_search_text (user_id, message_id, is_preview, search_text"
        f"{key_column}) SELECT {row}user_id, {row}id, {row}is_preview, {_sqlite_text(row)}"
        f"{key_value} {source} WHERE {row}user_id IS NOT NULL"
    )


def _sqlite_triggers(sorted_: bool) -> tuple[str, ...]:
    forget = "DELETE FROM messages_search_text WHERE user_id = old.user_id AND message_id = old.id"
    columns = "subject, to_header, cc_header, user_id, is_preview"
    if sorted_:
        # The whole key: one seek, not a scan of the user's rows.
        forget += " AND created_at = old.created_at"
        columns += ", created_at"
    return (
        f"""CREATE TRIGGER messages_search_text_insert AFTER INSERT ON messages BEGIN
        {_sqlite_copy("new.", "", sorted_)};
    END""",
        f"""CREATE TRIGGER messages_search_text_update AFTER UPDATE OF {columns} ON messages
    BEGIN
        {forget};
        {_sqlite_copy("new.", "", sorted_)};
    END""",
        f"""CREATE TRIGGER messages_search_text_delete AFTER DELETE ON messages BEGIN
        {forget};
    END""",
    )


def _sqlite_rebuild(sorted_: bool) -> None:
    """messages_search_text built anew from messages, with or without the sort key."""
    bind = op.get_bind()
    for name in _SQLITE_TRIGGER_NAMES:
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    bind.exec_driver_sql("DROP INDEX IF EXISTS messages_search_text_message")
    bind.exec_driver_sql("DROP TABLE messages_search_text")
    bind.exec_driver_sql(_sqlite_table(sorted_))
    for trigger in _sqlite_triggers(sorted_):
        bind.exec_driver_sql(trigger)
    # The emails already there; the triggers keep the copy from here.
    bind.exec_driver_sql(_sqlite_copy("", "FROM messages", sorted_))
    if sorted_:
        bind.exec_driver_sql(
            "CREATE UNIQUE INDEX messages_search_text_message ON messages_search_text (message_id)"
        )


# ------------------------------------------------------------------ PostgreSQL


def _pg_function(sorted_: bool) -> str:
    # a9d1f3b5c7e9's function, with the sort key if sorted_.
    column, value, update = (
        (", created_at", ", NEW.created_at", ",\n        created_at = EXCLUDED.created_at")
        if sorted_
        else ("", "", "")
    )
    return f"""CREATE OR REPLACE FUNCTION messages_search_text_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_search_text (message_id, user_id, is_preview, search_text{column})
    VALUES (NEW.id, NEW.user_id, NEW.is_preview,
            lower(NEW.subject || chr(10) || NEW.to_header || chr(10) || NEW.cc_header){value})
    ON CONFLICT (message_id) DO UPDATE SET
        user_id = EXCLUDED.user_id,
        is_preview = EXCLUDED.is_preview,
        search_text = EXCLUDED.search_text{update};
    RETURN NULL;
END
$$"""  # noqa: S608


def _pg_trigger(sorted_: bool) -> str:
    columns = "subject, to_header, cc_header, user_id, is_preview"
    if sorted_:
        columns += ", created_at"
    return f"""CREATE TRIGGER messages_search_text_sync
AFTER INSERT OR UPDATE OF {columns} ON messages
FOR EACH ROW EXECUTE FUNCTION messages_search_text_sync()"""


def _pg_upgrade() -> None:
    bind = op.get_bind()
    # Emails can still be read; inserts and updates wait, so no copy is committed
    # without its key between the filling below and the commit (see a9d1f3b5c7e9).
    bind.exec_driver_sql("LOCK TABLE messages IN SHARE MODE")
    bind.exec_driver_sql("ALTER TABLE messages_search_text ADD COLUMN created_at timestamptz")
    bind.exec_driver_sql(_pg_function(sorted_=True))
    bind.exec_driver_sql("DROP TRIGGER messages_search_text_sync ON messages")
    bind.exec_driver_sql(_pg_trigger(sorted_=True))
    bind.exec_driver_sql(
        "UPDATE messages_search_text t SET created_at = m.created_at "
        "FROM messages m WHERE m.id = t.message_id"
    )
    bind.exec_driver_sql("ALTER TABLE messages_search_text ALTER COLUMN created_at SET NOT NULL")
    bind.exec_driver_sql(
        "CREATE INDEX messages_search_text_newest ON messages_search_text "
        "(user_id, created_at DESC, message_id DESC)"
    )
    bind.exec_driver_sql("ANALYZE messages_search_text")


def _pg_downgrade() -> None:
    bind = op.get_bind()
    bind.exec_driver_sql("DROP TRIGGER messages_search_text_sync ON messages")
    bind.exec_driver_sql(_pg_function(sorted_=False))
    bind.exec_driver_sql(_pg_trigger(sorted_=False))
    bind.exec_driver_sql("DROP INDEX IF EXISTS messages_search_text_newest")
    bind.exec_driver_sql("ALTER TABLE messages_search_text DROP COLUMN created_at")


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_upgrade()
    else:
        _sqlite_rebuild(sorted_=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _pg_downgrade()
    else:
        _sqlite_rebuild(sorted_=False)
