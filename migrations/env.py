"""Alembic environment: one metadata, the URL from mailbeacon's settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, text

from mailbeacon.config import Settings
from mailbeacon.db import make_engine
from mailbeacon.models import Base

config = context.config
target_metadata = Base.metadata


# pg_advisory_xact_lock key held while migrating ("mbmg"): several processes
# starting at once (`serve --workers N`, a database coming back) migrate one
# after the other, and all but the first find nothing left to do.
_MIGRATION_LOCK = 0x6D626D67


def _include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """Leave the search indexes out of `alembic check`: they exist only where the backend
    offers them (FTS5 on SQLite, pg_trgm on PostgreSQL; migration a3d5f7b9c1e2), so
    the models cannot describe them. The outbox workers' crash markers and their index
    of due copies are PostgreSQL's only, for the same reason (migrations e7b9d1f3a5c6
    and d2f4a6c8e0b1)."""
    name = name or ""
    return not (
        name.startswith("messages_search")
        or name in ("outbox_crash_markers", "ix_recipient_copies_due")
    )


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_name=_include_name,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or Settings().database_url()
    engine = make_engine(url)
    try:
        # On SQLite the write lock comes first, for the same reason as the lock above.
        with engine.connect().execution_options(sqlite_immediate=True) as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `mailbeacon db upgrade`")
run_migrations_online()
