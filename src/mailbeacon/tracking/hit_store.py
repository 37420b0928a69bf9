"""The hit pipeline's SQL: what it loads before classifying, and what it writes after.

Statements are written with SQLAlchemy Core. The per-batch reads (context,
history, stored uids) run as ordinary Core statements, the batch's ids passed as
one parameter (``db.in_list``). On SQLite the three statements run once per row of
a batch (events, figures, link figures) are compiled once and executed at driver
level (``db.BatchStatement``); on PostgreSQL, where each row of an executemany is
a statement for the server, the events go in with COPY and the figures with one
update joined to arrays (see "PostgreSQL's bulk forms" below).

Figures are maintained in the events' own transaction (DESIGN: figures are not
recomputed per page view). Rows are updated in id order, the order the outbox
worker settles copies in, so concurrent transactions never deadlock.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    Table,
    bindparam,
    func,
    insert,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import GenericFunction

from mailbeacon.db import BatchStatement, copy_rows, in_list, list_value, pg_columns
from mailbeacon.kit.clock import as_utc
from mailbeacon.models import (
    AnonymousHit,
    EventKind,
    EventLabel,
    LinkClickStat,
    MailboxConnection,
    Message,
    RecipientCopy,
    TrackingEvent,
)
from mailbeacon.models.base import UTCDateTime
from mailbeacon.models.event import PERSON_LABELS
from mailbeacon.tracking.events import StoredEvent

_events = cast(Table, TrackingEvent.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_messages = cast(Table, Message.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_link_stats = cast(Table, LinkClickStat.__table__)
_anonymous = cast(Table, AnonymousHit.__table__)

# Id lists in one statement stay under SQLite's bound-parameter limit.
CHUNK = 500


# ------------------------------------------------------------------ earliest / latest


class earliest(GenericFunction[datetime]):
    """The earlier of a column and a value, either of which may be NULL."""

    type = UTCDateTime()
    inherit_cache = True


class latest(GenericFunction[datetime]):
    """The later of a column and a value, either of which may be NULL."""

    type = UTCDateTime()
    inherit_cache = True


@compiles(earliest, "postgresql")
def _earliest_pg(element: Any, compiler: Any, **kw: Any) -> str:
    # LEAST and GREATEST skip NULLs on PostgreSQL.
    return f"LEAST({compiler.process(element.clauses, **kw)})"


@compiles(latest, "postgresql")
def _latest_pg(element: Any, compiler: Any, **kw: Any) -> str:
    return f"GREATEST({compiler.process(element.clauses, **kw)})"


def _sqlite_pick(function: str, element: Any, compiler: Any, **kw: Any) -> str:
    # SQLite's two-argument min/max return NULL if either is NULL.
    a, b = (compiler.process(c, **kw) for c in element.clauses)
    return f"COALESCE({function}({a}, {b}), {a}, {b})"


@compiles(earliest, "sqlite")
def _earliest_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return _sqlite_pick("min", element, compiler, **kw)


@compiles(latest, "sqlite")
def _latest_sqlite(element: Any, compiler: Any, **kw: Any) -> str:
    return _sqlite_pick("max", element, compiler, **kw)


# ------------------------------------------------------------------ loading


@dataclass(frozen=True, slots=True)
class CopyContext:
    """What the pipeline needs to know about a copy to classify and attribute a hit."""

    message_id: int
    sender_id: int | None
    sent_at: datetime | None
    last_event_at: datetime | None
    # Delivered by the built-in demo mailbox: loopback to a page a person reads,
    # with no security gateway in between, so "too soon after sending" means
    # nothing there (and a newcomer trying the product opens it within seconds).
    via_demo_mailbox: bool = False


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """An event already stored for a copy, as the burst and duplicate rules see it."""

    at: float  # Unix time
    kind: EventKind
    link_position: int | None
    ip_prefix: str | None
    user_agent: str
    label: EventLabel


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


@dataclass(frozen=True, slots=True)
class _Reads:
    stored_uids: Any
    load_copies: Any


_READS: dict[str, _Reads] = {}


def _reads(dialect: Dialect) -> _Reads:
    found = _READS.get(dialect.name)
    if found is None:
        c, m = _copies.c, _messages.c
        uids = union_all(
            select(_events.c.uid).where(in_list(_events.c.uid, "uids", dialect)),
            # Hits counted anonymously left no event, only their uid.
            select(_anonymous.c.uid).where(in_list(_anonymous.c.uid, "uids", dialect)),
        )
        copies = (
            select(
                c.id,
                c.message_id,
                # The copy's own sending time, else its email's: one timestamp to read.
                func.coalesce(c.sent_at, m.sent_at),
                c.last_event_at,
                m.user_id,
                _mailboxes.c.is_demo,
            )
            .select_from(
                _copies.join(_messages, m.id == c.message_id).outerjoin(
                    _mailboxes, _mailboxes.c.id == m.mailbox_connection_id
                )
            )
            .where(in_list(c.id, "ids", dialect))
        )
        found = _READS[dialect.name] = _Reads(uids, copies)
    return found


def stored_uids(conn: Connection, uids: Sequence[str]) -> set[str]:
    """Which of these hit uids are stored already (a journal or spool replayed twice)."""
    if not uids:
        return set()
    dialect = conn.dialect
    return set(conn.scalars(_reads(dialect).stored_uids, {"uids": list_value(dialect, uids)}))


def load_copies(conn: Connection, copy_ids: Sequence[int]) -> dict[int, CopyContext]:
    ids = sorted(set(copy_ids))
    if not ids:
        return {}
    dialect = conn.dialect
    found: dict[int, CopyContext] = {}
    for cid, mid, sent, last_event, user_id, demo in conn.execute(
        _reads(dialect).load_copies, {"ids": list_value(dialect, ids)}
    ):
        found[cid] = CopyContext(mid, user_id, sent, last_event, bool(demo))
    return found


def load_recent(
    conn: Connection, copy_ids: Sequence[int], since: datetime, per_copy: int
) -> dict[int, list[RecentEvent]]:
    """The newest ``per_copy`` events of each copy since a moment, oldest first."""
    e = _events.c
    ranked = (
        select(
            e.copy_id,
            e.occurred_at,
            e.kind,
            e.link_position,
            e.ip_prefix,
            e.user_agent,
            e.label,
            func.row_number()
            .over(partition_by=e.copy_id, order_by=e.occurred_at.desc())
            .label("rn"),
        )
        .where(e.occurred_at >= since)
        .subquery()
    )
    found: dict[int, list[RecentEvent]] = defaultdict(list)
    for chunk in _chunks(sorted(set(copy_ids))):
        query = (
            select(ranked)
            .where(ranked.c.copy_id.in_(chunk), ranked.c.rn <= per_copy)
            .order_by(ranked.c.occurred_at)
        )
        for row in conn.execute(query):
            found[row.copy_id].append(
                RecentEvent(
                    as_utc(row.occurred_at).timestamp(),
                    EventKind(row.kind),
                    row.link_position,
                    row.ip_prefix,
                    row.user_agent,
                    EventLabel(row.label),
                )
            )
    return found


# ------------------------------------------------------------------ writing


@dataclass(slots=True)
class _Figures:
    """What one batch adds to one copy (or one message)."""

    opens: int = 0
    clicks: int = 0
    machine: int = 0
    forwarded: int = 0  # of the opens
    first_open: datetime | None = None
    last_open: datetime | None = None
    first_click: datetime | None = None
    last_click: datetime | None = None
    last_event: datetime | None = None

    def add(self, event: StoredEvent, person: bool) -> None:
        """Count an event in; ``person`` is its ``by_person``, worked out once per event."""
        at = event.occurred_at
        last = self.last_event
        self.last_event = at if last is None or at > last else last
        if not person:
            self.machine += 1
        elif event.kind == EventKind.OPEN:
            self.opens += 1
            if event.possibly_forwarded:
                self.forwarded += 1
            first, last = self.first_open, self.last_open
            self.first_open = at if first is None or at < first else first
            self.last_open = at if last is None or at > last else last
        else:
            self.clicks += 1
            first, last = self.first_click, self.last_click
            self.first_click = at if first is None or at < first else first
            self.last_click = at if last is None or at > last else last

    def row(self, key: int) -> tuple[Any, ...]:
        """The update's parameters, in ``_FIGURE_COLUMNS`` order."""
        return (
            key,
            self.opens,
            self.clicks,
            self.machine,
            self.forwarded,
            self.first_open,
            self.last_open,
            self.first_click,
            self.last_click,
            self.last_event,
        )


@dataclass(slots=True)
class _LinkFigures:
    clicks: int = 0
    machine: int = 0
    first: datetime | None = None
    last: datetime | None = None

    def add(self, event: StoredEvent, person: bool) -> None:
        if not person:
            self.machine += 1
            return
        at = event.occurred_at
        self.clicks += 1
        self.first = at if self.first is None else min(self.first, at)
        self.last = at if self.last is None else max(self.last, at)


def _figures_update(table: Table, *, with_last_event: bool) -> Any:
    t = table.c
    ts = UTCDateTime()
    values: dict[str, Any] = {
        "open_count": t.open_count + bindparam("opens"),
        "click_count": t.click_count + bindparam("clicks"),
        "machine_event_count": t.machine_event_count + bindparam("machine"),
        "forwarded_open_count": t.forwarded_open_count + bindparam("forwarded"),
        "first_open_at": earliest(t.first_open_at, bindparam("first_open", type_=ts)),
        "last_open_at": latest(t.last_open_at, bindparam("last_open", type_=ts)),
        "first_click_at": earliest(t.first_click_at, bindparam("first_click", type_=ts)),
        "last_click_at": latest(t.last_click_at, bindparam("last_click", type_=ts)),
    }
    if with_last_event:
        values["last_event_at"] = latest(t.last_event_at, bindparam("last_event", type_=ts))
    return update(table).where(t.id == bindparam("k")).values(values)


def _link_upsert(dialect: Dialect) -> Any:
    s = _link_stats.c
    ts = UTCDateTime()
    make = postgresql.insert if dialect.name == "postgresql" else sqlite.insert
    stmt = make(_link_stats).values(
        copy_id=bindparam("copy_id"),
        position=bindparam("position"),
        click_count=bindparam("clicks"),
        machine_click_count=bindparam("machine"),
        first_click_at=bindparam("first", type_=ts),
        last_click_at=bindparam("last", type_=ts),
    )
    return stmt.on_conflict_do_update(
        index_elements=[s.copy_id, s.position],
        set_={
            "click_count": s.click_count + stmt.excluded.click_count,
            "machine_click_count": s.machine_click_count + stmt.excluded.machine_click_count,
            "first_click_at": earliest(s.first_click_at, stmt.excluded.first_click_at),
            "last_click_at": latest(s.last_click_at, stmt.excluded.last_click_at),
        },
    )


_FIGURE_COLUMNS = (
    "k", "opens", "clicks", "machine", "forwarded", "first_open", "last_open", "first_click",
    "last_click", "last_event",
)  # fmt: skip
_LINK_COLUMNS = ("copy_id", "position", "clicks", "machine", "first", "last")
# The order of the event tuples the pipeline builds (``event_row``).
EVENT_COLUMNS = (
    "uid", "copy_id", "message_id", "kind", "link_position", "occurred_at", "recorded_at",
    "label", "reason", "user_agent", "ip_prefix", "network", "is_head", "prefetch_hint",
    "viewer_user_id", "possibly_forwarded",
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class HitStatements:
    insert_events: BatchStatement
    update_copies: BatchStatement
    update_messages: BatchStatement
    upsert_links: BatchStatement


_COMPILED: dict[tuple[str, str], HitStatements] = {}


def _statements(dialect: Dialect) -> HitStatements:
    key = (dialect.name, dialect.driver)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = _compile_statements(dialect)
    return found


def _compile_statements(dialect: Dialect) -> HitStatements:
    insert_events = insert(_events).values({c: bindparam(c) for c in EVENT_COLUMNS})
    return HitStatements(
        BatchStatement(insert_events, dialect, EVENT_COLUMNS),
        BatchStatement(_figures_update(_copies, with_last_event=True), dialect, _FIGURE_COLUMNS),
        BatchStatement(_figures_update(_messages, with_last_event=False), dialect, _FIGURE_COLUMNS),
        BatchStatement(_link_upsert(dialect), dialect, _LINK_COLUMNS),
    )


def write_events(conn: Connection, rows: list[tuple[Any, ...]], events: list[StoredEvent]) -> None:
    """Insert the events and add them to the copy, message and link figures.

    ``rows`` are the event rows (in ``EVENT_COLUMNS`` order); ``events`` the same
    events typed.
    """
    if conn.dialect.name == "postgresql":
        # The figures are summed and put into arrays while the server stores the rows.
        arrays = copy_rows(
            conn, _events.name, EVENT_COLUMNS, rows, meanwhile=lambda: _pg_figure_arrays(events)
        )
        assert arrays is not None
        copies, messages, links = arrays
        _pg_add_figures(conn, _copies, copies)
        _pg_add_figures(conn, _messages, messages)
        _pg_upsert_links(conn, links)
        return
    figures = _figure_rows(events)
    sql = _statements(conn.dialect)
    sql.insert_events.run(conn, rows)
    sql.update_copies.run(conn, figures.copies)
    sql.update_messages.run(conn, figures.messages)
    sql.upsert_links.run(conn, figures.links)


@dataclass(slots=True)
class _FigureRows:
    """What a batch adds to each copy, message and link, as the updates' rows (in key
    order: the order every writer locks them in)."""

    copies: list[tuple[Any, ...]]
    messages: list[tuple[Any, ...]]
    links: list[tuple[Any, ...]]


def _figure_rows(events: list[StoredEvent]) -> _FigureRows:
    copy_figs: dict[int, _Figures] = defaultdict(_Figures)
    message_figs: dict[int, _Figures] = defaultdict(_Figures)
    link_figs: dict[tuple[int, int], _LinkFigures] = defaultdict(_LinkFigures)
    for event in events:
        person = event.label in PERSON_LABELS
        copy_figs[event.copy_id].add(event, person)
        message_figs[event.message_id].add(event, person)
        if event.kind == EventKind.CLICK and event.link_position is not None:
            link_figs[(event.copy_id, event.link_position)].add(event, person)
    return _FigureRows(
        copies=[f.row(k) for k, f in sorted(copy_figs.items())],
        messages=[f.row(k) for k, f in sorted(message_figs.items())],
        links=[
            (cid, pos, lf.clicks, lf.machine, lf.first, lf.last)
            for (cid, pos), lf in sorted(link_figs.items())
        ],
    )


_Arrays = tuple[str, ...] | None


def _pg_figure_arrays(events: list[StoredEvent]) -> tuple[_Arrays, _Arrays, _Arrays]:
    """The figures' rows as the PostgreSQL updates' array parameters (None: no rows)."""
    figures = _figure_rows(events)
    return (
        _pg_columns(figures.copies),
        _pg_columns(figures.messages),
        _pg_columns(figures.links),
    )


def _pg_columns(rows: list[tuple[Any, ...]]) -> _Arrays:
    return pg_columns(rows) if rows else None


# ------------------------------------------------------------------ PostgreSQL's bulk forms
#
# On PostgreSQL an executemany is still one statement per row on the server, and
# per row the server's work is what a batch costs. These write a whole batch in a
# few statements: COPY for the events, and updates joined to the batch's figures
# passed as arrays (unnest). Core has no COPY and no multi-array unnest, so they
# are written as text, from the same column lists as the statements above.


def _pg_figures_update(table: str, last_event: str) -> str:
    # LEAST and GREATEST skip NULLs (as ``earliest`` and ``latest`` above).
    return (
        "UPDATE " + table + " AS t SET"
        " open_count = t.open_count + v.opens,"
        " click_count = t.click_count + v.clicks,"
        " machine_event_count = t.machine_event_count + v.machine,"
        " forwarded_open_count = t.forwarded_open_count + v.forwarded,"
        " first_open_at = LEAST(t.first_open_at, v.first_open),"
        " last_open_at = GREATEST(t.last_open_at, v.last_open),"
        " first_click_at = LEAST(t.first_click_at, v.first_click),"
        " last_click_at = GREATEST(t.last_click_at, v.last_click)" + last_event + " FROM unnest("
        "%s::bigint[], %s::integer[], %s::integer[], %s::integer[], %s::integer[],"
        " %s::timestamptz[], %s::timestamptz[], %s::timestamptz[], %s::timestamptz[],"
        " %s::timestamptz[])"
        " AS v(k, opens, clicks, machine, forwarded, first_open, last_open, first_click,"
        " last_click, last_event) WHERE t.id = v.k"
    )


# Rows in ``_FIGURE_COLUMNS`` order; messages have no last_event_at (its value is unused).
_PG_FIGURES = {
    "recipient_copies": _pg_figures_update(
        "recipient_copies", ", last_event_at = GREATEST(t.last_event_at, v.last_event)"
    ),
    "messages": _pg_figures_update("messages", ""),
}
# An update joined to arrays locks its rows in whatever order the join yields them;
# locking them first in id order keeps to the order every writer of these rows
# follows, so that concurrent consumers never deadlock.
_PG_LOCK = {
    "recipient_copies": "SELECT 1 FROM recipient_copies WHERE id = ANY(%s::bigint[])"
    " ORDER BY id FOR UPDATE",
    "messages": "SELECT 1 FROM messages WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE",
}


def _pg_add_figures(conn: Connection, table: Table, columns: _Arrays) -> None:
    """Add a batch's figures to copies or messages: ``_FIGURE_COLUMNS`` as arrays."""
    if columns is None:
        return
    conn.exec_driver_sql(_PG_LOCK[table.name], (columns[0],))
    conn.exec_driver_sql(_PG_FIGURES[table.name], columns)


_PG_UPSERT_LINKS = (
    "INSERT INTO link_click_stats"
    " (copy_id, position, click_count, machine_click_count, first_click_at, last_click_at)"
    " SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::integer[], %s::integer[],"
    " %s::timestamptz[], %s::timestamptz[])"
    " ON CONFLICT (copy_id, position) DO UPDATE SET"
    " click_count = link_click_stats.click_count + excluded.click_count,"
    " machine_click_count = link_click_stats.machine_click_count"
    " + excluded.machine_click_count,"
    " first_click_at = LEAST(link_click_stats.first_click_at, excluded.first_click_at),"
    " last_click_at = GREATEST(link_click_stats.last_click_at, excluded.last_click_at)"
)


def _pg_upsert_links(conn: Connection, columns: _Arrays) -> None:
    """Add a batch's clicks to the link figures, in (copy, position) order as given."""
    if columns is not None:
        conn.exec_driver_sql(_PG_UPSERT_LINKS, columns)


def count_anonymously(conn: Connection, events: list[StoredEvent], recorded_at: datetime) -> None:
    """Add hits to their emails' figures only, and keep their uids (for exactly-once
    replay): no event row, no copy or link figures, nothing that names a person."""
    if not events:
        return
    message_figs: dict[int, _Figures] = defaultdict(_Figures)
    for event in events:
        message_figs[event.message_id].add(event, event.by_person)
    rows = [f.row(k) for k, f in sorted(message_figs.items())]
    if conn.dialect.name == "postgresql":
        _pg_add_figures(conn, _messages, _pg_columns(rows))
    else:
        _statements(conn.dialect).update_messages.run(conn, rows)
    conn.execute(insert(_anonymous), [{"uid": e.uid, "recorded_at": recorded_at} for e in events])
