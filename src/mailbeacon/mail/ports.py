"""What the mail domain needs from elsewhere, as protocols the composition root fills in.

The tracking domain implements two (``tracking.service.TrackingService``):
planning a send instruments each copy, and showing a sent email turns its
tracked links back into their destinations. The privacy domain implements
:class:`ConsentPolicy`: which recipients may be tracked at all, and the
opt-out footer their tracked copies carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.orm import Session

from mailbeacon.models import Message, RecipientCopy, TrackingDecision


@dataclass(frozen=True, slots=True)
class Untracked:
    """The planner's word that a copy must go out untracked, whatever the switches say:
    the decision stored on the copy and the reason its sender is shown (a copy to their
    own address; later, a recipient without consent)."""

    decision: TrackingDecision
    reason: str


class Instrumenter(Protocol):
    def record_links(self, session: Session, message: Message) -> None:
        """Store the message's trackable destinations, by position (before its copies)."""

    def instrument_copy(
        self,
        session: Session,
        message: Message,
        copy: RecipientCopy,
        untracked: Untracked | None = None,
    ) -> None:
        """Decide the copy's tracking (decision and reason) and store its bodies: tracked
        ones, or with ``untracked`` the bodies as written (no pixel, links as they are)
        and that decision and reason."""


class TrackedLinks(Protocol):
    def is_tracking_url(self, url: str) -> bool:
        """Whether a URL is a tracking pixel or tracked link (ours or another installation's)."""

    def destination(self, url: str) -> str | None:
        """What a link leads to once its tracking is taken off; None if it leads nowhere."""

    def restore_in_text(self, text: str) -> str:
        """A plain-text body with tracked URLs replaced by their destinations."""


class CopyRule(Protocol):
    """What the organisation's policy says about tracking one recipient's copy."""

    @property
    def decision(self) -> TrackingDecision | None:
        """The decision to store, or None: as the sender's switches and the body say."""

    @property
    def reason(self) -> str:
        """Why, in words shown to the sender."""

    @property
    def tracked(self) -> bool:
        """False: the copy goes out untracked (no pixel, links as written) with this
        decision. True with a decision: tracked, but stored with it (``aggregate``)."""

    @property
    def footer_html(self) -> str:
        """What a tracked copy's HTML ends with (the opt-out link); "" for nothing."""

    @property
    def footer_text(self) -> str:
        """What a tracked copy's plain text ends with; "" for nothing."""


class ConsentPolicy(Protocol):
    def rules(
        self,
        session: Session,
        organisation_id: int,
        recipients: Mapping[str, int | None],
        *,
        demo: bool,
    ) -> Mapping[str, CopyRule]:
        """The rule for each recipient, by address key (lower-cased), each with its contact
        id if there is one yet (a footer needs it). ``demo``: the email goes to the
        built-in demo mailbox, which no person outside this server receives."""
