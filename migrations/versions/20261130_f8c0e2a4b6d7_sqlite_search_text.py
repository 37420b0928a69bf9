"""SQLite: the Mail tab's search reads a narrow, lowered copy of each email's
searched text, as it does on PostgreSQL (d6a8c0e2f4b5), instead of the emails.

``messages_search_text`` has PostgreSQL's columns (``message_id``, ``user_id``,
``is_preview``, ``search_text``), so mail/reading.py queries it the same way on
both backends. Two differences, both for SQLite's sake:

- The columns are joined with a newline, not a space:
  ``lower(subject || char(10) || to_header || char(10) || cc_header)``. The search
  folds every run of whitespace in what is typed to one space, and escapes LIKE's
  wildcards, so no search contains a newline and none can match across two
  columns: one LIKE on this text finds exactly what the LIKE on each of the three
  columns of ``messages`` found. (SQLite's lower() and LIKE both fold ASCII case
  only, so the lowering changes nothing LIKE sees.)
- The primary key is ``(user_id, message_id)`` and the table is WITHOUT ROWID:
  each user's copies lie together, so a search scans the sender's own rows and
  nothing else, and re-checking the FTS5 candidates of a3d5f7b9c1e2 is one seek
  each. Emails without an owner (previews of ``mailbeacon instrument``) have no
  row; every search is scoped to a user, so they were never found anyway.

Why: a search of one or two characters has no trigram and scans the sender's
emails, and a scan of ``messages`` (the bodies live there, before To and Cc in
each row) with three LIKEs per row took about 100 ms at 100,000 emails
(bench/README.md).

Triggers keep the copy in step with inserts, deletes and updates of the searched
columns, the owner and ``is_preview`` (not of the figures the hit pipeline
updates all the time). There is no foreign key: with SQLite's foreign keys on, a
later migration that recreates ``messages`` (batch mode) would empty this table
by cascade; that migration drops these triggers with the old table and must
create them again (``_SQLITE_TRIGGERS``), as for a3d5f7b9c1e2's.

PostgreSQL is left as d6a8c0e2f4b5 made it.

Revision ID: f8c0e2a4b6d7
Revises: e7b9d1f3a5c6
Create Date: 2026-11-30 15:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "f8c0e2a4b6d7"
down_revision: str | None = "e7b9d1f3a5c6"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_TABLE = """CREATE TABLE messages_search_text (
    user_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    is_preview BOOLEAN NOT NULL,
    search_text TEXT NOT NULL,
    CONSTRAINT pk_messages_search_text PRIMARY KEY (user_id, message_id)
) WITHOUT ROWID"""


def _text(row: str) -> str:
    return f"lower({row}subject || char(10) || {row}to_header || char(10) || {row}cc_header)"


def _copy(row: str, source: str = "") -> str:
    """The copies of the emails with an owner: the trigger's row (``new.``), or every
    row of ``source``."""
    return (
        "INSERT INTO messages_search_text (user_id, message_id, is_preview, search_text) "
        f"SELECT {row}user_id, {row}id, {row}is_preview, {_text(row)} {source} "
        f"WHERE {row}user_id IS NOT NULL"
    )


_FORGET_OLD = "DELETE FROM messages_search_text WHERE user_id = old.user_id AND message_id = old.id"
_SQLITE_TRIGGERS = (
    f"""CREATE TRIGGER messages_search_text_insert AFTER INSERT ON messages BEGIN
        {_copy("new.")};
    END""",
    f"""CREATE TRIGGER messages_search_text_update
    AFTER UPDATE OF subject, to_header, cc_header, user_id, is_preview ON messages BEGIN
        {_FORGET_OLD};
        {_copy("new.")};
    END""",
    f"""CREATE TRIGGER messages_search_text_delete AFTER DELETE ON messages BEGIN
        {_FORGET_OLD};
    END""",
)


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    bind.exec_driver_sql(_SQLITE_TABLE)
    for trigger in _SQLITE_TRIGGERS:
        bind.exec_driver_sql(trigger)
    # The emails already there.
    bind.exec_driver_sql(_copy("", "FROM messages"))


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    for name in (
        "messages_search_text_insert",
        "messages_search_text_update",
        "messages_search_text_delete",
    ):
        bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
    bind.exec_driver_sql("DROP TABLE IF EXISTS messages_search_text")
