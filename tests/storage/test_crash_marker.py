"""What the outbox workers' crash markers rest on, on a PostgreSQL server of the
test's own: the table is unlogged, a crash empties it, a clean restart does not.

The workers' handling of a crash (marker gone, recent commits lost) is tested in
tests/mail/test_worker.py against the shared server, by doing to the rows what
crash recovery does; this checks that PostgreSQL does it.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from mailbeacon.db import normalise_url
from mailbeacon.mail import queue
from mailbeacon.migrate import upgrade
from tests.own_postgres import OwnPostgres, own_postgres_server

pytestmark = pytest.mark.slow


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with own_postgres_server() as server:
        server.start()
        upgrade(server.url)
        yield server


def _markers(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return queue.crash_markers_of(conn, ["w1", "w2"])


def test_a_crash_empties_the_markers_and_a_clean_restart_keeps_them(
    own_postgres: OwnPostgres,
) -> None:
    engine = create_engine(normalise_url(own_postgres.url))
    try:
        with engine.begin() as conn:
            persistence = conn.scalar(
                text("SELECT relpersistence FROM pg_class WHERE relname = 'outbox_crash_markers'")
            )
            assert persistence == "u"  # unlogged
            conn.execute(text("INSERT INTO outbox_crash_markers VALUES ('w1'), ('w2')"))
            # A row that commits do write to the log, to tell the two restarts apart
            # from a database that lost everything.
            conn.execute(text("CREATE TABLE survivor (n int)"))
            conn.execute(text("INSERT INTO survivor VALUES (1)"))
        engine.dispose()

        own_postgres.stop()
        own_postgres.start()
        assert _markers(engine) == {"w1", "w2"}
        engine.dispose()

        own_postgres.crash()
        own_postgres.start()
        assert _markers(engine) == set()
        with engine.connect() as conn:
            assert conn.scalar(text("SELECT n FROM survivor")) == 1
    finally:
        engine.dispose()
