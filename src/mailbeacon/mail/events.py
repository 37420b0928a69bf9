"""Events the mail domain raises after commit (``db.after_commit``)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SendQueued:
    """Copies of this message are due now: the outbox worker should look at once rather
    than at its next poll."""

    message_id: int
