"""What the mail domain needs from elsewhere, as protocols the composition root fills in.

The tracking domain implements both (``tracking.service.TrackingService``):
planning a send instruments each copy, and showing a sent email turns its
tracked links back into their destinations.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session

from mailbeacon.models import Message, RecipientCopy


class Instrumenter(Protocol):
    def record_links(self, session: Session, message: Message) -> None:
        """Store the message's trackable destinations, by position (before its copies)."""

    def instrument_copy(self, session: Session, message: Message, copy: RecipientCopy) -> None:
        """Decide the copy's tracking (decision and reason) and store its tracked bodies."""


class TrackedLinks(Protocol):
    def is_tracking_url(self, url: str) -> bool:
        """Whether a URL is a tracking pixel or tracked link (ours or another installation's)."""

    def destination(self, url: str) -> str | None:
        """What a link leads to once its tracking is taken off; None if it leads nowhere."""

    def restore_in_text(self, text: str) -> str:
        """A plain-text body with tracked URLs replaced by their destinations."""
