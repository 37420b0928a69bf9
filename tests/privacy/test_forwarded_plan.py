"""The forwarded-open check reads its sources from the partial index made for it.

Its condition must be the index's, written the same way: a planner uses a partial
index only where it can prove the query's condition implies the index's, and a query
that no longer matches falls back to visiting every event of the copies, silently.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import event

from mailbeacon.db import Database
from mailbeacon.privacy import repository

INDEX = "ix_tracking_events_human_sources"


def test_the_sources_of_human_opens_are_read_from_their_index(database: Database) -> None:
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "GROUP BY" in statement:
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        with database.sessions() as session:
            assert repository.human_sources(session, [1, 2, 3]) == []
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    [(statement, parameters)] = seen

    with database.engine.connect() as conn:
        if database.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plan = " ".join(str(row[-1]) for row in rows)
        else:
            # On an empty table any plan is cheap: take the table scans away, so that
            # only an index the condition allows can be chosen.
            conn.exec_driver_sql("SET LOCAL enable_seqscan = off")
            conn.exec_driver_sql("SET LOCAL enable_bitmapscan = off")
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
            plan = " ".join(row[0] for row in rows)
    assert INDEX in plan, plan
