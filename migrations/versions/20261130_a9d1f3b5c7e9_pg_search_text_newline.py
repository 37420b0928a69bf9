"""PostgreSQL: the Mail tab's search never matches across two of the searched columns.

d6a8c0e2f4b5 joined subject, To and Cc with a space in ``messages_search_text``, so
a search ``alpha beta`` found an email with subject "…Alpha" and To "beta…". The
copy now joins them with a newline, ``lower(subject || chr(10) || to_header ||
chr(10) || cc_header)``, as SQLite's does (f8c0e2a4b6d7): the search folds every run
of whitespace in what is typed to one space and escapes LIKE's wildcards, so no
pattern can match a newline, and a match lies within one column.

The pg_trgm index still serves: pg_trgm splits words on any character that is not
alphanumeric, so a newline yields the same trigrams as a space did, and the LIKE
re-checks each candidate the index gives.

The trigger function is replaced and every copy rewritten. Writes to ``messages``
wait until this commits: a transaction that inserted with the old function and
committed after the rewrite read the table would leave a space-joined copy behind.
Searches go on meanwhile, on the old text. The index stays in place: at 100,000
emails the rewrite took no longer with it than dropping it and building it again
(3.8-5.2 s against 4.9-6.0 s, three rounds each on a busy machine), and a DROP INDEX
would stop every search until the commit. The
old versions of the rows stay, in the table and in the index, until VACUUM (or
autovacuum) removes them.

SQLite is left as f8c0e2a4b6d7 made it.

Revision ID: a9d1f3b5c7e9
Revises: f8c0e2a4b6d7
Create Date: 2026-11-30 16:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "a9d1f3b5c7e9"
down_revision: str | None = "f8c0e2a4b6d7"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The only text put into the SQL below (hence its noqa: S608): these constants and
# column prefixes, never input.
_NEWLINE = "chr(10)"
_SPACE = "' '"


def _text(row: str, separator: str) -> str:
    return f"lower({row}subject || {separator} || {row}to_header || {separator} || {row}cc_header)"


def _function(separator: str) -> str:
    # The function of d6a8c0e2f4b5 with only the separator changed.
    return f"""CREATE OR REPLACE FUNCTION messages_search_text_sync() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO messages_search_text (message_id, user_id, is_preview, search_text)
    VALUES (NEW.id, NEW.user_id, NEW.is_preview, {_text("NEW.", separator)})
    ON CONFLICT (message_id) DO UPDATE SET
        user_id = EXCLUDED.user_id,
        is_preview = EXCLUDED.is_preview,
        search_text = EXCLUDED.search_text;
    RETURN NULL;
END
$$"""  # noqa: S608


def _rejoin(separator: str) -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    # Emails can still be read; inserts and updates wait, so every copy the old function
    # wrote is committed and seen by the rewrite below (see the module's docstring).
    bind.exec_driver_sql("LOCK TABLE messages IN SHARE MODE")
    bind.exec_driver_sql(_function(separator))
    bind.exec_driver_sql(
        f"UPDATE messages_search_text t SET search_text = {_text('m.', separator)} "  # noqa: S608
        "FROM messages m WHERE m.id = t.message_id"
    )
    # Every row was rewritten: statistics now, for the planner's choice between the
    # index and a scan that stops early (d6a8c0e2f4b5).
    bind.exec_driver_sql("ANALYZE messages_search_text")


def upgrade() -> None:
    _rejoin(_NEWLINE)


def downgrade() -> None:
    _rejoin(_SPACE)
