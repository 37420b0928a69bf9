"""Notices about no email, for the bell: today, a webhook endpoint that was disabled
(implements ``webhooks.ports.OwnerNotices``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import NotificationKind
from mailbeacon.notify import repository
from mailbeacon.notify.live import LiveUpdate

TITLE_CHARS = 500


class SettingsNotices:
    """Raises a notification about the user's settings and wakes their open pages."""

    def endpoint_disabled(self, session: Session, user_id: int, title: str) -> None:
        """Runs inside the transaction that disables the endpoint."""
        now = utcnow()
        conn = session.connection()
        repository.insert_notifications(
            conn,
            [
                {
                    "user_id": user_id,
                    "kind": NotificationKind.WEBHOOK_DISABLED,
                    "message_id": None,
                    "copy_id": None,
                    "link_position": None,
                    "occurrences": 1,
                    "title": title[:TITLE_CHARS],
                    "created_at": now,
                    "updated_at": now,
                    "read_at": None,
                }
            ],
        )
        wake: dict[int, tuple[int, ...]] = {user_id: ()}
        if conn.dialect.name == "postgresql":
            repository.announce(conn, wake)
        after_commit(session, LiveUpdate(wake))
