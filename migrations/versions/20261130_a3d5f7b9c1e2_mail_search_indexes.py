"""Indexes for the Mail tab's search: FTS5 trigrams on SQLite, pg_trgm on PostgreSQL.

The search stays a substring match on the subject, To and Cc (and Bcc copies);
these indexes only find the candidates faster (mail/reading.py re-checks every
candidate with the same LIKE as before, so the results do not change).

SQLite: ``messages_search``, an FTS5 table with the trigram tokenizer over
``messages`` (external content, so the text is not stored twice), kept in step
by triggers and filled from the rows already there. Without FTS5 or its trigram
tokenizer (SQLite older than 3.34), nothing is created and the search scans.
A later migration that recreates ``messages`` (batch mode) drops the triggers
with the old table and must create them again (``_SQLITE_TRIGGERS``).

PostgreSQL: trigram GIN indexes on the expression the search matches and on Bcc
addresses. ``CREATE EXTENSION pg_trgm`` needs the CREATE privilege on the
database (pg_trgm is a trusted extension); where the extension is not available
or may not be created, the indexes are left out and the search scans as before.
An operator can add them later by running this migration's statements by hand.

Revision ID: a3d5f7b9c1e2
Revises: 9e6b0c4d5a7f
Create Date: 2026-11-30 09:00:00
"""

import logging
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a3d5f7b9c1e2"
down_revision: str | None = "9e6b0c4d5a7f"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

log = logging.getLogger("alembic.runtime.migration")

_SQLITE_TABLE = (
    "CREATE VIRTUAL TABLE messages_search USING fts5("
    "subject, to_header, cc_header, content='messages', content_rowid='id', "
    "tokenize='trigram')"
)
# Only the searched columns fire the update trigger: the hit pipeline updates the
# figures on messages all the time, and those updates must not touch the index.
_SQLITE_TRIGGERS = (
    """CREATE TRIGGER messages_search_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_search (rowid, subject, to_header, cc_header)
        VALUES (new.id, new.subject, new.to_header, new.cc_header);
    END""",
    """CREATE TRIGGER messages_search_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_search (messages_search, rowid, subject, to_header, cc_header)
        VALUES ('delete', old.id, old.subject, old.to_header, old.cc_header);
    END""",
    """CREATE TRIGGER messages_search_update AFTER UPDATE OF subject, to_header, cc_header
    ON messages BEGIN
        INSERT INTO messages_search (messages_search, rowid, subject, to_header, cc_header)
        VALUES ('delete', old.id, old.subject, old.to_header, old.cc_header);
        INSERT INTO messages_search (rowid, subject, to_header, cc_header)
        VALUES (new.id, new.subject, new.to_header, new.cc_header);
    END""",
)
# The very expression mail/reading.py matches on PostgreSQL.
_PG_HEADERS = "lower(subject || ' ' || to_header || ' ' || cc_header)"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        _upgrade_sqlite(bind)
    else:
        _upgrade_postgresql(bind)


def _upgrade_sqlite(bind: sa.Connection) -> None:
    try:
        with bind.begin_nested():
            bind.exec_driver_sql(_SQLITE_TABLE)
    except sa.exc.OperationalError as exc:
        log.warning("no FTS5 trigram index for the Mail tab's search (%s); it scans", exc)
        return
    for trigger in _SQLITE_TRIGGERS:
        bind.exec_driver_sql(trigger)
    # The emails already there.
    bind.exec_driver_sql("INSERT INTO messages_search (messages_search) VALUES ('rebuild')")


def _upgrade_postgresql(bind: sa.Connection) -> None:
    problem = ""
    schema = _trgm_schema(bind)
    # In public where we may (where most databases keep their extensions, and where it
    # outlives any one schema of ours), else in the schema we migrate.
    for statement in (
        "CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public",
        "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    ):
        if schema is not None:
            break
        try:
            with bind.begin_nested():
                bind.exec_driver_sql(statement)
        except sa.exc.DBAPIError as exc:
            problem = str(exc.orig).strip().splitlines()[0]
            continue
        schema = _trgm_schema(bind)
    if schema is None:
        log.warning(
            "pg_trgm is not available (%s); the Mail tab's search scans without an index",
            problem,
        )
        return
    # The operator class is named with its schema: the extension may live in another
    # schema than the tables (installed once per database, e.g. in public).
    ops = f'"{schema}".gin_trgm_ops'
    bind.exec_driver_sql(
        f"CREATE INDEX messages_search_trgm ON messages USING gin ({_PG_HEADERS} {ops})"
    )
    bind.exec_driver_sql(
        "CREATE INDEX messages_search_bcc_trgm ON recipient_copies "
        f"USING gin (lower(address) {ops}) WHERE kind = 'bcc'"
    )


def _trgm_schema(bind: sa.Connection) -> str | None:
    found = bind.exec_driver_sql(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_trgm'"
    ).scalar()
    return str(found) if found is not None else None


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "sqlite":
        for name in ("messages_search_insert", "messages_search_delete", "messages_search_update"):
            bind.exec_driver_sql(f"DROP TRIGGER IF EXISTS {name}")
        bind.exec_driver_sql("DROP TABLE IF EXISTS messages_search")
    else:
        # The extension stays: other objects of the database may use it.
        bind.exec_driver_sql("DROP INDEX IF EXISTS messages_search_bcc_trgm")
        bind.exec_driver_sql("DROP INDEX IF EXISTS messages_search_trgm")
