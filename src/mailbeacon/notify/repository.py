"""Every query of the notify domain.

The batch queries (``open_state``, ``click_state``, ``insert_notifications``,
``bump_notifications``) run inside the ingest writer's transaction on its plain
connection, so they use SQLAlchemy Core and load the state of a whole batch at
once; on PostgreSQL the batch's notifications go in with COPY and its bumps with one
update joined to arrays, as the hit pipeline writes its events and figures. The feed
queries take the request's session, and every one of them is scoped to the signed-in
user: another user's notification does not exist.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Row,
    Table,
    bindparam,
    func,
    insert,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from mailbeacon.db import BatchStatement, copy_rows, in_list, list_value, pg_columns
from mailbeacon.kit.clock import as_utc
from mailbeacon.models import (
    Contact,
    LinkClickStat,
    Message,
    MessageLink,
    Notification,
    NotificationKind,
    RecipientCopy,
    User,
)
from mailbeacon.notify.live import CHANNEL, Wake, encode_wake

_notifications = cast(Table, Notification.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_contacts = cast(Table, Contact.__table__)
_messages = cast(Table, Message.__table__)
_users = cast(Table, User.__table__)
_link_stats = cast(Table, LinkClickStat.__table__)
_links = cast(Table, MessageLink.__table__)

OPEN_KINDS = (NotificationKind.FIRST_OPEN, NotificationKind.REOPEN)


# ------------------------------------------------------------------ the writer's batch


def open_state(conn: Connection, copy_ids: Sequence[int]) -> list[Row[Any]]:
    """For each copy whose sender wants notifications: its figures, its message and the
    latest open notification (if any), in one query.

    The latest open notification is the one with the highest id: collapsing only
    moves ``updated_at`` forward, and a newer notification always has a higher id.
    """
    dialect = conn.dialect
    latest = (
        select(_notifications.c.copy_id, func.max(_notifications.c.id).label("nid"))
        .where(
            in_list(_notifications.c.copy_id, "ids", dialect),
            _notifications.c.kind.in_([str(k) for k in OPEN_KINDS]),
        )
        .group_by(_notifications.c.copy_id)
        .subquery()
    )
    n = _notifications.alias("n")
    query = (
        select(
            _copies.c.id,
            _copies.c.address,
            _copies.c.open_count,
            _copies.c.message_id,
            _messages.c.subject,
            _messages.c.to_header,
            _messages.c.cc_header,
            _contacts.c.name.label("contact_name"),
            _users.c.id.label("user_id"),
            _users.c.notify_quiet_minutes,
            n.c.id.label("notification_id"),
            n.c.updated_at.label("notified_at"),
        )
        .join(_messages, _messages.c.id == _copies.c.message_id)
        .outerjoin(_contacts, _contacts.c.id == _copies.c.contact_id)
        .join(_users, _users.c.id == _messages.c.user_id)
        .outerjoin(latest, latest.c.copy_id == _copies.c.id)
        .outerjoin(n, n.c.id == latest.c.nid)
        .where(in_list(_copies.c.id, "ids", dialect), _users.c.notify_tracking.is_(True))
    )
    # The batch's ids as one parameter: compiled once, whatever the batch's size.
    # all(): one fetch for the whole result, not a call through the result per row.
    rows = conn.execute(query, {"ids": list_value(dialect, sorted(copy_ids))}).all()
    return cast(list[Row[Any]], rows)


def click_state(conn: Connection, pairs: Sequence[tuple[int, int]]) -> list[Row[Any]]:
    """Per (copy, link position): the person clicks counted so far and what the link is,
    for copies whose sender wants notifications."""
    dialect = conn.dialect
    query = (
        select(
            _copies.c.id.label("copy_id"),
            _copies.c.address,
            _copies.c.message_id,
            _messages.c.subject,
            _messages.c.to_header,
            _messages.c.cc_header,
            _contacts.c.name.label("contact_name"),
            _users.c.id.label("user_id"),
            _link_stats.c.position,
            _link_stats.c.click_count,
            _links.c.url,
            _links.c.text,
        )
        .join(_messages, _messages.c.id == _copies.c.message_id)
        .outerjoin(_contacts, _contacts.c.id == _copies.c.contact_id)
        .join(_users, _users.c.id == _messages.c.user_id)
        .join(_link_stats, _link_stats.c.copy_id == _copies.c.id)
        .outerjoin(
            _links,
            (_links.c.message_id == _copies.c.message_id)
            & (_links.c.position == _link_stats.c.position),
        )
        .where(
            in_list(_copies.c.id, "ids", dialect),
            _users.c.notify_tracking.is_(True),
        )
    )
    wanted = set(pairs)
    ids = sorted({copy_id for copy_id, _ in pairs})
    rows = conn.execute(query, {"ids": list_value(dialect, ids)}).all()
    return [cast(Row[Any], row) for row in rows if (row.copy_id, row.position) in wanted]


# The columns of the rows the observer builds, in its order.
NOTIFICATION_COLUMNS = (
    "user_id", "kind", "message_id", "copy_id", "link_position", "occurrences", "title",
    "created_at", "updated_at", "read_at",
)  # fmt: skip
_INSERT = insert(_notifications).values({c: bindparam(c) for c in NOTIFICATION_COLUMNS})
_BUMP = (
    update(_notifications)
    .where(_notifications.c.id == bindparam("n_id"))
    .values(
        occurrences=_notifications.c.occurrences + bindparam("n_more"),
        updated_at=bindparam("n_at", type_=_notifications.c.updated_at.type),
    )
)
_COMPILED: dict[tuple[str, str], tuple[BatchStatement, BatchStatement]] = {}


def _statements(conn: Connection) -> tuple[BatchStatement, BatchStatement]:
    """The insert and the bump, compiled once and run at driver level: a batch of hits
    raises thousands of notifications, and SQLAlchemy's execution layer costs more
    per row than the database."""
    dialect = conn.dialect
    key = (dialect.name, dialect.driver)
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = (
            BatchStatement(_INSERT, dialect, NOTIFICATION_COLUMNS),
            BatchStatement(_BUMP, dialect, ("n_id", "n_more", "n_at")),
        )
    return found


_NOTIFICATION_ROW = operator.itemgetter(*NOTIFICATION_COLUMNS)
_TIMES = tuple(NOTIFICATION_COLUMNS.index(c) for c in ("created_at", "updated_at", "read_at"))


def _aware_row(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row for COPY, its times in UTC: COPY reads a naive time in the session's zone."""
    values = list(_NOTIFICATION_ROW(row))
    for i in _TIMES:
        if values[i] is not None:
            values[i] = as_utc(values[i])
    return tuple(values)


def insert_notifications(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """Insert in the order given (ids follow it)."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # An executemany is a statement per row on PostgreSQL: COPY is one stream.
        copy_rows(conn, _notifications.name, NOTIFICATION_COLUMNS, map(_aware_row, rows))
        return
    _statements(conn)[0].run(conn, [_NOTIFICATION_ROW(r) for r in rows])


# PostgreSQL: one update joined to the bumps passed as arrays, its rows locked first in
# id order (a join locks them in whatever order it yields them).
_PG_LOCK_NOTIFICATIONS = (
    "SELECT 1 FROM notifications WHERE id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE"
)
_PG_BUMP = (
    "UPDATE notifications AS t SET occurrences = t.occurrences + v.more, updated_at = v.at"
    " FROM unnest(%s::bigint[], %s::integer[], %s::timestamptz[]) AS v(id, more, at)"
    " WHERE t.id = v.id"
)


def bump_notifications(conn: Connection, bumps: dict[int, tuple[int, datetime]]) -> None:
    """Add occurrences to existing notifications (repeated opens inside the quiet period)."""
    if not bumps:
        return
    # In id order, as every writer of these rows goes.
    rows = [(nid, more, at) for nid, (more, at) in sorted(bumps.items())]
    if conn.dialect.name == "postgresql":
        ids, more, at = pg_columns(rows)
        conn.exec_driver_sql(_PG_LOCK_NOTIFICATIONS, (ids,))
        conn.exec_driver_sql(_PG_BUMP, (ids, more, at))
        return
    _statements(conn)[1].run(conn, rows)


def announce(conn: Connection | Session, wake: Wake) -> None:
    """On PostgreSQL, queue the wake for delivery when the caller's transaction commits."""
    for payload in encode_wake(wake):
        conn.execute(select(func.pg_notify(CHANNEL, payload)))


# ------------------------------------------------------------------ the feed


def list_notifications(
    session: Session, user_id: int, before: tuple[datetime, int] | None, limit: int
) -> list[Notification]:
    """The user's notifications, newest first (keyset pagination on created_at, id)."""
    query = select(Notification).where(Notification.user_id == user_id)
    if before is not None:
        query = query.where(tuple_(Notification.created_at, Notification.id) < before)
    query = query.order_by(Notification.created_at.desc(), Notification.id.desc()).limit(limit)
    return list(session.scalars(query))


def count_unread(session: Session, user_id: int, cap: int) -> int:
    """Unread notifications, counted up to ``cap``: the bell says "99+" anyway, and a
    user who never reads them must not make every recount scan thousands."""
    unread = (
        select(_notifications.c.id)
        .where(_notifications.c.user_id == user_id, _notifications.c.read_at.is_(None))
        .limit(cap)
        .subquery()
    )
    return int(session.scalar(select(func.count()).select_from(unread)) or 0)


def owned_ids(session: Session, user_id: int, ids: Sequence[int]) -> set[int]:
    """Which of these notification ids are the user's."""
    if not ids:
        return set()
    return set(
        session.scalars(
            select(_notifications.c.id).where(
                _notifications.c.user_id == user_id, _notifications.c.id.in_(list(ids))
            )
        )
    )


def mark_read(session: Session, user_id: int, ids: Sequence[int], now: datetime) -> None:
    if ids:
        session.execute(
            update(_notifications)
            .where(
                _notifications.c.user_id == user_id,
                _notifications.c.id.in_(list(ids)),
                _notifications.c.read_at.is_(None),
            )
            .values(read_at=now)
        )


def mark_all_read(session: Session, user_id: int, now: datetime) -> int:
    result = session.execute(
        update(_notifications)
        .where(_notifications.c.user_id == user_id, _notifications.c.read_at.is_(None))
        .values(read_at=now)
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def get_user(session: Session, user_id: int) -> User | None:
    return session.get(User, user_id)


def users_notified(conn: Connection, user_ids: Sequence[int]) -> set[int]:
    """Which of these users want notifications at all."""
    if not user_ids:
        return set()
    return set(
        conn.scalars(
            select(_users.c.id).where(
                _users.c.id.in_(sorted(set(user_ids))), _users.c.notify_tracking.is_(True)
            )
        )
    )
