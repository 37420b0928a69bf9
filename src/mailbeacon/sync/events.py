"""What mailbox sync hands to the rest of the product: typed events about stored mail.

This module is the sync domain's published interface for observers, as
``tracking.events`` is the hit pipeline's. Another domain that reacts to
replies, automatic replies and bounces (notifications today) implements
:class:`ReceivedObserver` and is registered at the composition root. Observers
run inside the transaction that stored the mail: what they write commits or
rolls back with it, and anything that must leave the process is raised with
``db.after_commit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from mailbeacon.models.sync import ReceivedKind


@dataclass(frozen=True, slots=True)
class ReceivedStored:
    """One reply, automatic reply or bounce, stored and linked to a sent email."""

    received_id: int
    kind: ReceivedKind
    user_id: int  # the sender of the email it answers
    message_id: int
    # The recipient copy it concerns; None for a reply from someone the email was
    # forwarded to.
    copy_id: int | None
    from_address: str
    from_name: str
    subject: str  # of the sent email, as the sender wrote it
    received_at: datetime


class ReceivedObserver(Protocol):
    """Reacts to stored mail, inside the transaction that stored it."""

    def on_received(self, session: Session, events: Sequence[ReceivedStored]) -> None:
        """Called once per stored batch, in the order the mail arrived."""
