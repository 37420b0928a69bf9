"""What the hit pipeline hands to the rest of the product: typed stored events, and
what it asks of it: how much of a hit it may keep.

This module is the tracking domain's published interface for observers and for the gate.
Another domain that reacts to opens and clicks (notifications, webhooks) implements
:class:`HitObserver`; the privacy domain implements :class:`HitGate`, which screens
every batch before anything is classified or stored, and :class:`ForwardedCheck`, which
marks possibly forwarded opens before they are written. All are registered at the
composition root. The pipeline calls every observer inside the transaction that stored
the events, so what an observer writes (a notification, a webhook row) commits or rolls
back with them; anything that must leave the process (waking a browser, a delivery) is
raised with ``db.after_commit``.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
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
    # Where the hit came from, as stored (the prefix is None where the organisation
    # keeps none): what tells a possibly forwarded open from the recipient's own.
    ip_prefix: str | None
    user_agent: str
    # A person's open unlike the copy's earlier ones (see :class:`ForwardedCheck`).
    possibly_forwarded: bool = False

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
    # Hits the gate let through only as anonymous counts on their email, and hits it
    # kept nothing of (see :class:`Treatment`).
    anonymous: int = 0
    withheld: int = 0

    def add(self, other: BatchResult) -> None:
        self.written += other.written
        self.skipped_duplicates += other.skipped_duplicates
        self.unknown_copies += other.unknown_copies
        self.anonymous += other.anonymous
        self.withheld += other.withheld
        for label, count in other.labels.items():
            self.labels[label] = self.labels.get(label, 0) + count


class HitObserver(Protocol):
    """Reacts to stored events, inside the transaction that stored them."""

    def on_events_stored(self, session: Session, events: Sequence[StoredEvent]) -> None:
        """Called once per batch with its events in the order they happened."""


class ForwardedCheck(Protocol):
    """Tells which of a batch's opens were possibly forwarded (the privacy domain's rule).

    Asked before the events are written, inside the batch's transaction, so that the
    mark goes into the event rows and the figures with everything else: no second
    write of rows just inserted.
    """

    def possibly_forwarded(self, session: Session, events: Sequence[StoredEvent]) -> set[str]:
        """The uids of the events (the batch, in the order they happened) to mark."""


class Treatment(StrEnum):
    """How much of a hit on a copy may be kept, as the gate rules per copy.

    Whatever the treatment, the edge has already answered: the link redirected and
    the pixel was served. The treatment only decides what is stored.
    """

    FULL = "full"  # the event, the copy's and the email's figures, observers
    # As FULL, without the network prefix (the organisation keeps none).
    WITHOUT_NETWORK = "without_network"
    # Counted on the email only: no event, no copy figures, no observer (so no
    # notification naming a person).
    ANONYMOUS = "anonymous"
    NOTHING = "nothing"  # nothing at all: the person refused or withdrew


class HitGate(Protocol):
    """Rules, per copy, how much of its hits the pipeline may keep (privacy's policy)."""

    def screen(self, session: Session, copy_ids: Collection[int]) -> Mapping[int, Treatment]:
        """The treatment of each copy's hits in this batch, read inside the batch's
        transaction (a withdrawal committed before it applies at once); a copy left out
        is treated as :attr:`Treatment.FULL`."""
