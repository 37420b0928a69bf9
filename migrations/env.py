"""Alembic environment: one metadata, the URL from mailbeacon's settings."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from mailbeacon.config import Settings
from mailbeacon.db import make_engine
from mailbeacon.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("url") or Settings().database_url()
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `mailbeacon db upgrade`")
run_migrations_online()
