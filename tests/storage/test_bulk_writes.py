"""PostgreSQL's bulk writes of a batch of hits: COPY with work done while the server
stores the rows, and copies' figures updated in place."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from psycopg import pq

from mailbeacon.config import Settings
from mailbeacon.db import Database, copy_rows
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import Base
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_user
from tests.factories.hits import hit, record
from tests.factories.mail import make_message


@pytest.fixture
def runtime(settings: Settings, pg_database: Database) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


def _bulk(conn: object) -> None:
    conn.exec_driver_sql(  # type: ignore[attr-defined]
        "CREATE TEMP TABLE bulk (id integer PRIMARY KEY, title varchar(60))"
    )


def test_work_given_to_a_copy_runs_while_the_server_takes_its_rows(
    pg_database: Database,
) -> None:
    seen: list[pq.TransactionStatus] = []
    with pg_database.engine.connect() as conn:
        _bulk(conn)
        pgconn = conn.connection.driver_connection.pgconn  # type: ignore[union-attr]

        def meanwhile() -> str:
            seen.append(pgconn.transaction_status)
            return "summed"

        rows = [(n, f"row {n}") for n in range(5_000)]
        assert copy_rows(conn, "bulk", ("id", "title"), rows, meanwhile=meanwhile) == "summed"
        assert conn.exec_driver_sql("SELECT count(*), max(id) FROM bulk").one() == (5_000, 4_999)
    # ACTIVE: the COPY was under way (its end not yet sent) when the work ran.
    assert seen == [pq.TransactionStatus.ACTIVE]


def test_a_failure_of_that_work_stores_none_of_the_rows(pg_database: Database) -> None:
    def meanwhile() -> None:
        raise ValueError("the figures could not be summed")

    with pg_database.engine.connect() as conn:
        _bulk(conn)
        conn.commit()
        with pytest.raises(ValueError, match="could not be summed"), conn.begin():
            copy_rows(conn, "bulk", ("id", "title"), [(1, "one"), (2, "two")], meanwhile)
        # The transaction was rolled back on the COPY's abort, and the connection goes on.
        assert conn.exec_driver_sql("SELECT count(*) FROM bulk").scalar() == 0
        copy_rows(conn, "bulk", ("id", "title"), [(3, "three")])
        assert conn.exec_driver_sql("SELECT id FROM bulk").scalar() == 3


def test_the_figures_tables_keep_the_room_their_models_declare(pg_database: Database) -> None:
    with pg_database.engine.connect() as conn:
        stored = dict(
            conn.exec_driver_sql(
                "SELECT relname, reloptions FROM pg_class"
                " WHERE relname IN ('recipient_copies', 'messages') AND relkind = 'r'"
                " AND relnamespace = current_schema()::regnamespace"
            ).all()
        )
    for name in ("recipient_copies", "messages"):
        declared = Base.metadata.tables[name].dialect_options["postgresql"]["with"]
        assert declared, name
        assert stored[name] == [f"{k}={v}" for k, v in declared.items()], name


def _seed_copies(database: Database, count: int) -> list[int]:
    with database.unit_of_work() as s:
        _, copies = make_message(
            s,
            make_user(s),
            recipients=tuple(f"r{n}@example.org" for n in range(count)),
            sent_at=utcnow() - timedelta(hours=2),
        )
        return [c.id for c in copies]


def _pages(database: Database) -> dict[int, int]:
    with database.engine.connect() as conn:
        return dict(
            conn.exec_driver_sql(
                "SELECT id, (ctid::text::point)[0]::int FROM recipient_copies"
            ).all()
        )


def test_a_batch_updates_its_copies_figures_on_their_own_pages(
    pg_database: Database, runtime: Runtime
) -> None:
    """Each new row version stays on its page (an update that leaves the indexes
    alone) for as many copies as the room left on each page holds; packed full, every
    one would move to a new page."""
    copies = _seed_copies(pg_database, 600)
    before = _pages(pg_database)
    touched = copies[::3]
    result = record(runtime, *(hit(c) for c in touched))
    assert result.written == len(touched)
    after = _pages(pg_database)
    stayed = sum(1 for c in touched if after[c] == before[c])
    with pg_database.engine.connect() as conn:
        opens = conn.exec_driver_sql("SELECT sum(open_count) FROM recipient_copies").scalar()
    assert opens == len(touched)
    assert stayed >= 0.9 * len(touched), (stayed, len(touched))
