"""Queries of the tracking domain outside the hit pipeline: events for operators."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import Connection, Table, func, select

from mailbeacon.models import TrackingEvent

_events = cast(Table, TrackingEvent.__table__)


def latest_events(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The newest events, newest first, for operators (`mailbeacon events`)."""
    rows = conn.execute(select(_events).order_by(_events.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def count_events(conn: Connection) -> int:
    return int(conn.scalar(select(func.count()).select_from(_events)) or 0)
