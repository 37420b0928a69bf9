"""What the hit pipeline hands to the rest of the product: typed stored events.

This module is the tracking domain's published interface for observers.
Another domain that reacts to opens and clicks (notifications today; consent,
webhooks and sync later) implements :class:`HitObserver` and is registered at
the composition root. The pipeline calls every observer inside the transaction
that stored the events, so what an observer writes (a notification, a webhook
row) commits or rolls back with them; anything that must leave the process
(waking a browser, a delivery) is raised with ``db.after_commit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from sqlalchemy.orm import Session

from mailbeacon.models.event import PERSON_LABELS, EventKind, EventLabel


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One hit as stored: who it concerns, how it was judged, when it happened."""

    uid: str
    copy_id: int
    message_id: int
    # The user who sent the email; None for previews (`mailbeacon instrument`),
    # whose data belong to nobody.
    sender_id: int | None
    kind: EventKind
    label: EventLabel
    reason: str
    link_position: int | None
    occurred_at: datetime

    @property
    def by_person(self) -> bool:
        """Counts in the figures: a person, or a proxy fetching for one."""
        return self.label in PERSON_LABELS


@dataclass(slots=True)
class BatchResult:
    """What one batch of hits came to."""

    written: int = 0
    skipped_duplicates: int = 0
    unknown_copies: int = 0
    labels: dict[EventLabel, int] = field(default_factory=dict)

    def add(self, other: BatchResult) -> None:
        self.written += other.written
        self.skipped_duplicates += other.skipped_duplicates
        self.unknown_copies += other.unknown_copies
        for label, count in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + count


class HitObserver(Protocol):
    """Reacts to stored events, inside the transaction that stored them."""

    def on_events_stored(self, session: Session, events: Sequence[StoredEvent]) -> None:
        """Called once per batch with its events in the order they happened."""
