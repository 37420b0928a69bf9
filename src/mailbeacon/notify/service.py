"""The notification feed: listing, counting and marking read, and the user's settings.

The rules that raise notifications live in ``notify/observer.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.kit.errors import NotFound
from mailbeacon.models import Notification, User
from mailbeacon.notify import repository
from mailbeacon.notify.live import LiveUpdate
from mailbeacon.notify.schemas import (
    NotificationOut,
    NotificationPage,
    NotificationSettings,
)

FEED_PAGE_SIZE = 50
# Unread counts stop here (the bell shows "99+" from 100 on).
UNREAD_CAP = 1000


class NotificationNotFound(NotFound):
    """No such notification among the user's own."""


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

    def mark_read(self, session: Session, user: User, notification_ids: Sequence[int]) -> None:
        """Mark some of the user's notifications read; others' ids raise NotificationNotFound.

        The user's other tabs update once it is committed.
        """
        ids = sorted(set(notification_ids))
        if repository.owned_ids(session, user.id, ids) != set(ids):
            raise NotificationNotFound(ids)
        repository.mark_read(session, user.id, ids, utcnow())
        self._announce(session, user.id)

    def mark_all_read(self, session: Session, user: User) -> None:
        """Mark every notification of the user read."""
        repository.mark_all_read(session, user.id, utcnow())
        self._announce(session, user.id)

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

    def _announce(self, session: Session, user_id: int) -> None:
        wake = {user_id: ()}
        if session.get_bind().dialect.name == "postgresql":
            repository.announce(session, wake)
        after_commit(session, LiveUpdate(wake))


notification_service = NotificationService()
