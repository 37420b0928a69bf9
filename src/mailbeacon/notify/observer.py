"""Notifications as an observer of the hit pipeline: which stored events tell the sender
something.

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

import operator
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.display import display_name, names_in_headers, unicode_address
from mailbeacon.models import EventKind, NotificationKind
from mailbeacon.notify import repository
from mailbeacon.notify.live import LiveUpdate
from mailbeacon.tracking.events import StoredEvent

TITLE_CHARS = 500


class NotificationObserver:
    """Raises notifications for a batch of stored events and wakes the senders' pages."""

    def on_events_stored(self, session: Session, events: Sequence[StoredEvent]) -> None:
        """Runs inside the pipeline's transaction, *after* the events are inserted and the
        copy and link figures updated: the rules read the figures and take the batch's
        own share back out. A handful of queries per batch, whatever its size.

        On PostgreSQL the wake also goes out with ``pg_notify``, which delivers it to
        every process when the transaction commits; in every case a ``LiveUpdate``
        is raised for this process after commit.
        """
        conn = session.connection()
        wake: dict[int, set[int]] = {}
        opens: dict[int, list[datetime]] = defaultdict(list)
        clicks: dict[tuple[int, int], list[datetime]] = defaultdict(list)
        for event in events:
            if event.sender_id is None:  # previews belong to nobody
                continue
            wake.setdefault(event.sender_id, set()).add(event.message_id)
            if not event.by_person:
                continue
            if event.kind == EventKind.OPEN:
                opens[event.copy_id].append(event.occurred_at)
            elif event.link_position is not None:
                clicks[(event.copy_id, event.link_position)].append(event.occurred_at)
        rows: list[dict[str, Any]] = []
        if opens:
            rows += _open_notifications(conn, opens)
        if clicks:
            rows += _click_notifications(conn, clicks)
        # In the order things happened, so ids follow time within a batch too.
        rows.sort(key=_ORDER)
        repository.insert_notifications(conn, rows)
        if wake:
            if conn.dialect.name == "postgresql":
                repository.announce(conn, wake)
            after_commit(session, LiveUpdate(wake))


_ORDER = operator.itemgetter("created_at", "copy_id")


@dataclass(slots=True)
class _Pending:
    """The open notification a copy's next open may collapse into."""

    last_at: datetime
    notification_id: int | None  # None: created in this batch
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
        title = f"{_who(state)} clicked {link} in {_quoted(state.subject)}"
        rows.append(_row(state, NotificationKind.FIRST_CLICK, min(times), state.position, title))
    return rows


def _row(
    state: Any, kind: NotificationKind, at: datetime, position: int | None, title: str
) -> dict[str, Any]:
    copy_id = state.id if kind != NotificationKind.FIRST_CLICK else state.copy_id
    return {
        "user_id": state.user_id,
        "kind": kind,
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
    return f"{_who(state)} opened {_quoted(state.subject)}{again}"


def _who(state: Any) -> str:
    """The recipient as the email named them (To or Cc), else as a contact, else their
    address with its domain in Unicode."""
    names = names_in_headers(state.to_header or "", state.cc_header or "")
    return display_name(state.address, names, state.contact_name) or unicode_address(state.address)


def _link_name(text: str | None, url: str | None) -> str:
    text = " ".join((text or "").split())
    if text and url:
        return f"“{text[:80]}” ({url[:200]})"
    return url[:200] if url else "a link"
