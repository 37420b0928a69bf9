"""The ingest writer's SQL, spelled once per backend and run at driver level.

The writer runs for every batch of hits on the hot path, so it skips the ORM and
SQLAlchemy's statement compilation and speaks to sqlite3 / psycopg directly
(through ``Connection.exec_driver_sql``, which keeps the pool and transactions).
Timestamps are written in the format SQLAlchemy's SQLite dialect uses, so the
ORM reads them back unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

_EVENT_COLUMNS = (
    "uid", "copy_id", "message_id", "kind", "link_position", "occurred_at", "recorded_at",
    "label", "reason", "user_agent", "ip_prefix", "network", "is_head", "prefetch_hint",
    "viewer_user_id",
)  # fmt: skip


class EventSql:
    """Statements and value conversions for one backend ("sqlite" or "postgresql")."""

    def __init__(self, dialect: str) -> None:
        self.postgres = dialect == "postgresql"
        p = "%s" if self.postgres else "?"
        ts = "%s::timestamptz" if self.postgres else "?"
        self._p = p
        # PostgreSQL's LEAST/GREATEST skip NULLs; SQLite's min/max return NULL if
        # any argument is NULL, hence the COALESCE chain there.
        self.insert_event = (
            f"INSERT INTO tracking_events ({', '.join(_EVENT_COLUMNS)}) "
            f"VALUES ({', '.join([p] * len(_EVENT_COLUMNS))})"
        )
        self.update_copy = self._figures_update("recipient_copies", with_last_event=True)
        self.update_message = self._figures_update("messages", with_last_event=False)
        self.upsert_link = (
            "INSERT INTO link_click_stats AS s (copy_id, position, click_count, "
            "machine_click_count, first_click_at, last_click_at) "
            f"VALUES ({p}, {p}, {p}, {p}, {ts}, {ts}) "
            "ON CONFLICT (copy_id, position) DO UPDATE SET "
            "click_count = s.click_count + excluded.click_count, "
            "machine_click_count = s.machine_click_count + excluded.machine_click_count, "
            + (
                "first_click_at = LEAST(s.first_click_at, excluded.first_click_at), "
                "last_click_at = GREATEST(s.last_click_at, excluded.last_click_at)"
                if self.postgres
                else "first_click_at = COALESCE(min(s.first_click_at, excluded.first_click_at), "
                "s.first_click_at, excluded.first_click_at), "
                "last_click_at = COALESCE(max(s.last_click_at, excluded.last_click_at), "
                "s.last_click_at, excluded.last_click_at)"
            )
        )

    def _earliest(self, col: str) -> str:
        if self.postgres:
            return f"LEAST({col}, %s::timestamptz)"
        return f"COALESCE(min({col}, ?), {col}, ?)"

    def _latest(self, col: str) -> str:
        if self.postgres:
            return f"GREATEST({col}, %s::timestamptz)"
        return f"COALESCE(max({col}, ?), {col}, ?)"

    def _figures_update(self, table: str, *, with_last_event: bool) -> str:
        parts = [
            "open_count = open_count + {p}",
            "click_count = click_count + {p}",
            "machine_event_count = machine_event_count + {p}",
            "first_open_at = " + self._earliest("first_open_at"),
            "last_open_at = " + self._latest("last_open_at"),
            "first_click_at = " + self._earliest("first_click_at"),
            "last_click_at = " + self._latest("last_click_at"),
        ]
        if with_last_event:
            parts.append("last_event_at = " + self._latest("last_event_at"))
        return (
            f"UPDATE {table} SET "
            + ", ".join(parts).replace("{p}", self._p)
            + f" WHERE id = {self._p}"
        )

    # -- values ---------------------------------------------------------------

    def ts(self, value: datetime | None) -> Any:
        if value is None or self.postgres:
            return value
        # isoformat is several times faster than strftime; on a naive UTC value
        # with microseconds it yields exactly SQLAlchemy's SQLite format.
        return value.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")

    def ts_param(self, value: datetime | None) -> tuple[Any, ...]:
        """A timestamp as the earliest/latest expressions take it (twice on SQLite)."""
        v = self.ts(value)
        return (v,) if self.postgres else (v, v)

    def read_ts(self, value: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value

    # -- queries with id lists ------------------------------------------------

    def _in(self, ids: Sequence[int]) -> tuple[str, tuple[Any, ...]]:
        if self.postgres:
            return "= ANY(%s)", (list(ids),)
        return f"IN ({', '.join('?' * len(ids))})", tuple(ids)

    def copy_context(self, ids: Sequence[int]) -> tuple[str, tuple[Any, ...]]:
        cond, params = self._in(ids)
        return (
            "SELECT c.id, c.message_id, c.sent_at, c.last_event_at, m.user_id, m.sent_at, "
            "mc.is_demo FROM recipient_copies c JOIN messages m ON m.id = c.message_id "
            "LEFT JOIN mailbox_connections mc ON mc.id = m.mailbox_connection_id "
            f"WHERE c.id {cond}",
            params,
        )

    def recent_events(
        self, ids: Sequence[int], since: datetime, limit: int
    ) -> tuple[str, tuple[Any, ...]]:
        cond, params = self._in(ids)
        ts = "%s::timestamptz" if self.postgres else "?"
        return (
            "SELECT copy_id, occurred_at, kind, link_position, ip_prefix, user_agent, label FROM ("
            "SELECT copy_id, occurred_at, kind, link_position, ip_prefix, user_agent, label, "
            "ROW_NUMBER() OVER (PARTITION BY copy_id ORDER BY occurred_at DESC) AS rn "
            f"FROM tracking_events WHERE copy_id {cond} AND occurred_at >= {ts}) AS recent "
            f"WHERE rn <= {int(limit)}",
            (*params, self.ts(since)),
        )

    def stored_uids(self, uids: Sequence[str]) -> tuple[str, tuple[Any, ...]]:
        if self.postgres:
            return "SELECT uid FROM tracking_events WHERE uid = ANY(%s)", (list(uids),)
        return (
            f"SELECT uid FROM tracking_events WHERE uid IN ({', '.join('?' * len(uids))})",
            tuple(uids),
        )

    def event_row(self, e: dict[str, Any], recorded_at: Any) -> tuple[Any, ...]:
        return (
            e["uid"],
            e["copy_id"],
            e["message_id"],
            e["kind"],
            e["link_position"],
            self.ts(e["occurred_at"]),
            recorded_at,
            e["label"],
            e["reason"],
            e["user_agent"],
            e["ip_prefix"],
            e["network"],
            e["is_head"] if self.postgres else int(e["is_head"]),
            e["prefetch_hint"],
            e["viewer_user_id"],
        )


_CACHE: dict[str, EventSql] = {}


def event_sql(dialect: str) -> EventSql:
    sql = _CACHE.get(dialect)
    if sql is None:
        sql = _CACHE[dialect] = EventSql(dialect)
    return sql
