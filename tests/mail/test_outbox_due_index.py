"""PostgreSQL: the outbox's scans for due copies walk ix_recipient_copies_due in order
(migration d2f4a6c8e0b1), never a bitmap of the status index, whose dead entries a
bitmap scan reads again each time."""

from __future__ import annotations

import json
from typing import Any

import pytest
from alembic import command
from sqlalchemy import text

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail import queue
from mailbeacon.migrate import alembic_config, upgrade
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan


def scans(plan: Any) -> list[tuple[str, str | None]]:
    """Every scan node of a JSON plan: (node type, index name)."""
    found: list[tuple[str, str | None]] = []
    stack = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if "Scan" in node.get("Node Type", "") and node.get("Relation Name") == (
                "recipient_copies"
            ):
                found.append((node["Node Type"], node.get("Index Name")))
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return found


def churn(database: Database, message_id: int, times: int) -> None:
    """Move a send's copies through the states a send does, leaving dead row versions
    and index entries behind, as many sends in a row would (no vacuum in between)."""
    with database.engine.begin() as conn:
        for _ in range(times):
            for status in ("queued", "sending", "sent"):
                conn.execute(
                    text(
                        "UPDATE recipient_copies SET status = :status, claimed_by = 'w0'"
                        " WHERE message_id = :m"
                    ),
                    {"status": status, "m": message_id},
                )


def test_the_due_scans_walk_the_due_index_in_order(database: Database, runtime: Runtime) -> None:
    if database.is_sqlite:
        pytest.skip("PostgreSQL's index (SQLite updates rows and their entries in place)")
    recipients = {"bcc": [f"p{i}@example.org" for i in range(300)], "to": ["ann@example.org"]}
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        sent = plan(s, runtime, user, **recipients).id
    churn(database, sent, 5)
    with database.unit_of_work() as s:
        plan(s, runtime, s.merge(user), **recipients)  # 301 copies queued
    now = utcnow()
    with database.engine.connect() as conn:
        conn.execute(text("ANALYZE recipient_copies"))
        claim = conn.execute(
            text("EXPLAIN (FORMAT JSON) " + queue._CLAIM_POSTGRESQL),
            {"now": now, "worker": "w1", "limit": 3},
        ).scalar()
        raw = conn.connection.driver_connection
        params = {
            "ids": [], "statuses": [], "replies": [], "nexts": [], "givebacks": [],
            "started": [], "start": [], "restart": [], "worker": "w1", "now": now,
            "limit": 3, "take": 15, "establish": True,
        }  # fmt: skip
        round_ = raw.execute("EXPLAIN (FORMAT JSON) " + queue._PSYCOPG["round"], params)
        round_plan = round_.fetchone()[0]
    for explained in (claim, round_plan):
        found = scans(json.loads(explained) if isinstance(explained, str) else explained)
        assert ("Index Scan", "ix_recipient_copies_due") in found, found
        assert not any(node.startswith("Bitmap") for node, _ in found), found


def test_the_due_index_goes_and_comes_back_with_its_migration(fresh_url: str) -> None:
    if fresh_url.startswith("sqlite"):
        pytest.skip("PostgreSQL's index")
    upgrade(fresh_url)
    database = Database(fresh_url)
    try:

        def indexes() -> set[str]:
            with database.engine.connect() as conn:
                return set(
                    conn.scalars(
                        text(
                            "SELECT indexname FROM pg_indexes WHERE tablename = 'recipient_copies'"
                            " AND schemaname = current_schema()"
                        )
                    )
                )

        assert "ix_recipient_copies_due" in indexes()
        command.downgrade(alembic_config(fresh_url), "c1e3a5b7d9f2")
        assert "ix_recipient_copies_due" not in indexes()
        assert "ix_recipient_copies_status_next" in indexes()
        upgrade(fresh_url)
        assert "ix_recipient_copies_due" in indexes()
    finally:
        database.dispose()
