"""Notifications as an observer of mailbox sync: "Carla Buyer replied to “Pricing”".

Only a person's reply notifies, and only if the sender wants notifications;
automatic replies and bounces never do, and sync never stores the sender's own
messages, so those cannot notify either. A reply that reached the mailbox more
than ``RECENT`` ago (the first sync of a newly connected mailbox reads weeks
back) is recorded without a notification: the bell is for what just happened.
Every stored piece of mail still wakes the sender's open pages, so the Mail tab
shows its reply marker or bounce at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.kit.display import unicode_address
from mailbeacon.models import NotificationKind, ReceivedKind
from mailbeacon.notify import repository
from mailbeacon.notify.live import LiveUpdate
from mailbeacon.sync.events import ReceivedStored

RECENT = timedelta(hours=24)
TITLE_CHARS = 500


def reply_title(who: str, subject: str) -> str:
    quoted = f"“{subject}”" if subject else "(no subject)"
    return f"{who} replied to {quoted}"


class ReplyNotifier:
    """Raises a notification per recent reply and wakes the senders' pages."""

    def on_received(self, session: Session, events: Sequence[ReceivedStored]) -> None:
        """Runs inside the transaction that stored the mail (see ``sync.events``)."""
        conn = session.connection()
        wake: dict[int, set[int]] = {}
        for event in events:
            wake.setdefault(event.user_id, set()).add(event.message_id)
        wanted = repository.users_notified(conn, list(wake))
        cutoff = utcnow() - RECENT
        rows: list[dict[str, Any]] = []
        for event in events:
            if (
                event.kind != ReceivedKind.REPLY
                or event.user_id not in wanted
                or as_utc(event.received_at) < cutoff
            ):
                continue
            who = event.from_name or unicode_address(event.from_address)
            title = reply_title(who, event.subject)
            rows.append(
                {
                    "user_id": event.user_id,
                    "kind": NotificationKind.REPLY,
                    "message_id": event.message_id,
                    "copy_id": event.copy_id,
                    "link_position": None,
                    "occurrences": 1,
                    "title": title[:TITLE_CHARS],
                    "created_at": event.received_at,
                    "updated_at": event.received_at,
                    "read_at": None,
                }
            )
        repository.insert_notifications(conn, rows)
        if conn.dialect.name == "postgresql":
            repository.announce(conn, wake)
        after_commit(session, LiveUpdate(wake))
