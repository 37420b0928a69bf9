"""Notification rules: when tracking activity tells the sender something, and the feed.

The rules, per recipient copy (each recipient is tracked separately):

* the first open by a person (``human`` or ``image_proxy``) raises ``first_open``;
* the first click by a person on each link raises ``first_click``;
* an open after a quiet period (``User.notify_quiet_minutes`` since the last
  notified open) raises ``reopen``; opens inside the quiet period add to the
  latest open notification (``occurrences``) instead of raising a new one.

Machine events and the sender's own views (labelled ``self``) never notify; a
user with "Notifications for tracking activities" off gets none. Every event,
person or machine, still wakes the sender's open pages, so the Mail tab shows
it at once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.models import EventKind, Notification, NotificationKind, User
from mailbeacon.models.event import PERSON_LABELS
from mailbeacon.notify import repository
from mailbeacon.notify.live import Wake
from mailbeacon.notify.schemas import (
    NotificationOut,
    NotificationPage,
    NotificationSettings,
)
from mailbeacon.tracking.activity import decode_cursor, encode_cursor

TITLE_CHARS = 500
FEED_PAGE_SIZE = 50
# Unread counts stop here (the bell shows "99+" from 100 on).
UNREAD_CAP = 1000


class NotificationNotFound(Exception):
    """No such notification among the user's own."""


# ------------------------------------------------------------------ the writer's hook


def notifications_for_batch(
    conn: Connection, events: list[dict[str, Any]], copies: dict[int, Any]
) -> dict[int, set[int]]:
    """Raise the notifications a batch of stored events calls for; return whom to wake.

    Runs inside the ingest writer's transaction, *after* the batch's events are
    inserted and the copy and link figures updated (the rules read the figures
    and take the batch's own share back out). A handful of queries per batch,
    whatever its size. On PostgreSQL the wake is also queued with ``pg_notify``,
    which delivers it to every process when the transaction commits; on SQLite
    the caller hands the returned wake to ``LiveBroker.publish`` after commit.

    The result maps each sender with new activity (person or machine) to the
    ids of their messages that have it.
    """
    wake: dict[int, set[int]] = {}
    opens: dict[int, list[datetime]] = defaultdict(list)
    clicks: dict[tuple[int, int], list[datetime]] = defaultdict(list)
    for event in events:
        copy = copies.get(event["copy_id"])
        user_id = None if copy is None else copy.user_id
        if user_id is None:  # previews belong to nobody
            continue
        wake.setdefault(user_id, set()).add(event["message_id"])
        if event["label"] not in PERSON_LABELS:
            continue
        at = as_utc(event["occurred_at"])
        if event["kind"] == EventKind.OPEN:
            opens[event["copy_id"]].append(at)
        elif event["link_position"] is not None:
            clicks[(event["copy_id"], event["link_position"])].append(at)
    new_rows: list[dict[str, Any]] = []
    if opens:
        new_rows += _open_notifications(conn, opens)
    if clicks:
        new_rows += _click_notifications(conn, clicks)
    # In the order things happened, so ids follow time within a batch too.
    new_rows.sort(key=lambda row: (row["created_at"], row["copy_id"]))
    repository.insert_notifications(conn, new_rows)
    if wake and conn.dialect.name == "postgresql":
        repository.announce(conn, wake)
    return wake


@dataclass(slots=True)
class _Pending:
    """The open notification a copy's next open may collapse into."""

    last_at: datetime
    notification_id: int | None  # None: created in this batch (index into rows)
    row: dict[str, Any] | None = None
    more: int = 0


def _open_notifications(conn: Connection, opens: dict[int, list[datetime]]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    bumps: dict[int, tuple[int, datetime]] = {}
    for state in repository.open_state(conn, sorted(opens)):
        times = sorted(opens[state.id])
        # The figures already count this batch's opens.
        earlier = state.open_count - len(times)
        quiet = timedelta(minutes=max(0, state.notify_quiet_minutes))
        pending: _Pending | None = None
        if state.notification_id is not None:
            pending = _Pending(as_utc(state.notified_at), state.notification_id)
        for at in times:
            if earlier <= 0:
                kind = NotificationKind.FIRST_OPEN
            elif pending is None or at - pending.last_at > quiet:
                kind = NotificationKind.REOPEN
            else:
                pending.more += 1
                pending.last_at = max(pending.last_at, at)
                if pending.row is not None:
                    pending.row["occurrences"] += 1
                    pending.row["updated_at"] = pending.last_at
                continue
            earlier += 1
            row = _row(state, kind, at, None, _open_title(state, kind))
            rows.append(row)
            if pending is not None and pending.notification_id is not None and pending.more:
                bumps[pending.notification_id] = (pending.more, pending.last_at)
            pending = _Pending(at, None, row)
        if pending is not None and pending.notification_id is not None and pending.more:
            bumps[pending.notification_id] = (pending.more, pending.last_at)
    repository.bump_notifications(conn, bumps)
    return rows


def _click_notifications(
    conn: Connection, clicks: dict[tuple[int, int], list[datetime]]
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for state in repository.click_state(conn, sorted(clicks)):
        times = clicks[(state.copy_id, state.position)]
        if state.click_count - len(times) > 0:
            continue  # a person clicked this link of this copy before
        link = _link_name(state.text, state.url)
        title = f"{state.address} clicked {link} in {_quoted(state.subject)}"
        rows.append(_row(state, NotificationKind.FIRST_CLICK, min(times), state.position, title))
    return rows


def _row(
    state: Any, kind: NotificationKind, at: datetime, position: int | None, title: str
) -> dict[str, Any]:
    copy_id = state.id if kind != NotificationKind.FIRST_CLICK else state.copy_id
    return {
        "user_id": state.user_id,
        "kind": str(kind),
        "message_id": state.message_id,
        "copy_id": copy_id,
        "link_position": position,
        "occurrences": 1,
        "title": title[:TITLE_CHARS],
        "created_at": at,
        "updated_at": at,
        "read_at": None,
    }


def _quoted(subject: str) -> str:
    return f"“{subject}”" if subject else "(no subject)"


def _open_title(state: Any, kind: NotificationKind) -> str:
    again = " again" if kind == NotificationKind.REOPEN else ""
    return f"{state.address} opened {_quoted(state.subject)}{again}"


def _link_name(text: str | None, url: str | None) -> str:
    text = " ".join((text or "").split())
    if text and url:
        return f"“{text[:80]}” ({url[:200]})"
    return url[:200] if url else "a link"


# ------------------------------------------------------------------ the feed


def notification_out(n: Notification) -> NotificationOut:
    return NotificationOut(
        id=n.id,
        kind=str(n.kind),
        title=n.title,
        message_id=n.message_id,
        copy_id=n.copy_id,
        link_position=n.link_position,
        occurrences=n.occurrences,
        created_at=n.created_at,
        updated_at=n.updated_at,
        read=n.read_at is not None,
        read_at=n.read_at,
    )


class NotificationService:
    def feed(
        self, session: Session, user: User, before: str | None = None, limit: int = FEED_PAGE_SIZE
    ) -> NotificationPage:
        """One page of the user's notifications, newest first, with the unread count."""
        found = repository.list_notifications(session, user.id, decode_cursor(before), limit + 1)
        items = found[:limit]
        return NotificationPage(
            items=[notification_out(n) for n in items],
            unread_count=repository.count_unread(session, user.id, UNREAD_CAP),
            next_cursor=(
                encode_cursor(items[-1].created_at, items[-1].id) if len(found) > limit else None
            ),
        )

    def unread_count(self, session: Session, user_id: int) -> int:
        """How many of the user's notifications are unread (the bell), at most ``UNREAD_CAP``."""
        return repository.count_unread(session, user_id, UNREAD_CAP)

    def mark_read(self, session: Session, user: User, notification_ids: Sequence[int]) -> Wake:
        """Mark some of the user's notifications read; others' ids raise NotificationNotFound.

        Returns the wake to publish after commit (the user's other tabs update).
        """
        ids = sorted(set(notification_ids))
        if repository.owned_ids(session, user.id, ids) != set(ids):
            raise NotificationNotFound(ids)
        repository.mark_read(session, user.id, ids, utcnow())
        return self._announce(session, user.id)

    def mark_all_read(self, session: Session, user: User) -> Wake:
        """Mark every notification of the user read; returns the wake to publish after commit."""
        repository.mark_all_read(session, user.id, utcnow())
        return self._announce(session, user.id)

    def get(self, session: Session, user: User, notification_id: int) -> Notification:
        """One of the user's notifications."""
        found = session.get(Notification, notification_id)
        if found is None or found.user_id != user.id:
            raise NotificationNotFound(notification_id)
        return found

    def settings(self, user: User) -> NotificationSettings:
        """The user's notification settings."""
        return NotificationSettings(
            notify_tracking=user.notify_tracking, quiet_minutes=user.notify_quiet_minutes
        )

    def save_settings(
        self, session: Session, user: User, data: NotificationSettings
    ) -> NotificationSettings:
        """Change the user's notification settings (validated by the schema)."""
        user.notify_tracking = data.notify_tracking
        user.notify_quiet_minutes = data.quiet_minutes
        session.flush()
        return self.settings(user)

    def _announce(self, session: Session, user_id: int) -> Wake:
        wake: Wake = {user_id: ()}
        if session.get_bind().dialect.name == "postgresql":
            repository.announce(session, wake)
        return wake


notification_service = NotificationService()
