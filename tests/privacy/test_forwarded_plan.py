"""The forwarded-open check's lookups are each a search of the index made for it.

Their condition must be the indexes', written the same way: a planner uses a partial
index only where it can prove the query's condition implies the index's, and a lookup
that no longer matches falls back to visiting every event of the copies, silently. Each
index leads with the copy: a planner without statistics (PostgreSQL with autovacuum off
takes a partial index built on an empty table for an empty one) may pick the wrong one,
and then reads one copy's opens, never the whole index.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, insert

from mailbeacon.db import Database
from mailbeacon.models import EventKind, EventLabel, TrackingEvent
from mailbeacon.privacy import repository
from tests.factories.accounts import make_user
from tests.factories.mail import make_message

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)


def _history(database: Database) -> list[int]:
    """Forty copies opened 50 times each, from 20 networks and 5 agents."""
    with database.unit_of_work() as s:
        message, copies = make_message(
            s, make_user(s), recipients=tuple(f"r{n}@example.org" for n in range(40))
        )
        rows = [
            {
                "uid": f"{c.id:016x}{n:016x}",
                "copy_id": c.id,
                "message_id": message.id,
                "kind": EventKind.OPEN,
                "occurred_at": T0 + timedelta(minutes=n),
                "label": EventLabel.HUMAN if n % 4 else EventLabel.SCANNER,
                "reason": "",
                "user_agent": f"Agent {n % 5}",
                "ip_prefix": f"198.51.{n % 20}.0/24",
            }
            for c in copies
            for n in range(50)
        ]
        s.execute(insert(TrackingEvent), rows)
        if not database.is_sqlite:
            s.connection().exec_driver_sql("ANALYZE tracking_events")
        return [c.id for c in copies]


def test_each_lookup_of_a_copys_first_opens_is_a_search_of_its_index(
    database: Database,
) -> None:
    one, two = _history(database)[:2]
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "UNION ALL" in statement:
            seen.append((statement, parameters))

    event.listen(database.engine, "before_cursor_execute", capture)
    try:
        with database.sessions() as session:
            rows = repository.first_human_opens(
                session,
                [one, two],
                [(one, "198.51.3.0/24"), (two, "192.0.2.0/24")],
                [(two, "Agent 2"), (one, 'Mozilla/5.0 "quoted", comma')],
            )
    finally:
        event.remove(database.engine, "before_cursor_execute", capture)
    # Each lookup answered: the first human open is the second event (the first was a
    # scanner's); a network and an agent seen first at their first human open; the
    # others never seen.
    assert sorted(tuple(r) for r in rows) == [
        (repository.COPY, one, None, T0 + timedelta(minutes=1)),
        (repository.COPY, two, None, T0 + timedelta(minutes=1)),
        (repository.PREFIX, one, "198.51.3.0/24", T0 + timedelta(minutes=3)),
        (repository.PREFIX, two, "192.0.2.0/24", None),
        (repository.AGENT, one, 'Mozilla/5.0 "quoted", comma', None),
        (repository.AGENT, two, "Agent 2", T0 + timedelta(minutes=2)),
    ]
    [(statement, parameters)] = seen

    with database.engine.connect() as conn:
        if database.is_sqlite:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters).all()
            plan = [str(row[-1]) for row in rows]
        else:
            rows = conn.exec_driver_sql("EXPLAIN " + statement, parameters).all()
            plan = [row[0] for row in rows]
    searches = [step for step in plan if "tracking_events" in step]
    assert len(searches) == 3, plan
    # In the order of the union: the copy's first open, by network, by agent.
    for step, index in zip(searches, ("copy_time", "human_prefixes", "human_agents"), strict=True):
        assert f"ix_tracking_events_{index}" in step, plan
        assert "Seq Scan" not in step and "Bitmap" not in step, plan
