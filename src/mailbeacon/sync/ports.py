"""What the sync domain needs from elsewhere, as protocols the composition root fills in."""

from __future__ import annotations

from typing import Protocol

from sqlalchemy.orm import Session


class SentCopySource(Protocol):
    """The mail domain builds the sender's own copy of a sent email (mail/sent_copy.py)."""

    def sent_copy(self, session: Session, message_id: int) -> bytes | None:
        """The copy for the Sent folder as RFC 5322 octets: the headers the recipients
        saw with a Bcc header added, the body as written (no pixel, links as written);
        None if the message is gone."""
