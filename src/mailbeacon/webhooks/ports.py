"""What the webhooks domain needs from elsewhere, as protocols the composition root fills in.

The notify domain implements :class:`OwnerNotices`: an endpoint the worker
disables (it answered 410 Gone, or failed for a day) is told to its owner in
the bell, in the transaction that disables it.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session


class OwnerNotices(Protocol):
    def endpoint_disabled(self, session: Session, user_id: int, title: str) -> None:
        """Tell the user, as a notification, that one of their endpoints was disabled."""
