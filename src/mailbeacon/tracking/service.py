"""What the tracking domain does for the rest of the product: instrumenting a copy
(with its tracking decision) and reading tracked URLs back into destinations.

``TrackingService`` implements the mail domain's ``Instrumenter`` and
``TrackedLinks`` protocols (mail/ports.py); the composition root hands it over.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

from ada_url import join_url
from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbeacon.kit.urls import normalise_url
from mailbeacon.models import Message, MessageLink, RecipientCopy, TrackingDecision
from mailbeacon.tracking.edge import location_for
from mailbeacon.tracking.instrument import Instrumented, find_links, instrument, is_empty_body
from mailbeacon.tracking.tokens import InvalidToken, TokenCodec

# Tokens are unpadded base64url (tokens.py).
_TRACKED_URL = re.compile(r"https?://[^\s<>\"']+?/t/[co]/[A-Za-z0-9_\-]+(?:\.gif)?")
_EDGE_PATHS = ("/t/o/", "/t/c/")


class NotTracked(Protocol):
    """A copy the sender's side has ruled out of tracking, and why (``mail.ports.Untracked``
    has this shape; the tracking domain does not import the mail domain)."""

    @property
    def decision(self) -> TrackingDecision: ...

    @property
    def reason(self) -> str: ...


@dataclass(frozen=True, slots=True)
class CopyPlan:
    decision: TrackingDecision
    reason: str
    open_tracking: bool
    link_tracking: bool


def decide_tracking(
    *, html: str | None, text: str | None, open_tracking: bool, link_tracking: bool
) -> CopyPlan:
    """What tracking a copy gets, and why; the reason is shown to the sender."""
    if not open_tracking and not link_tracking:
        return CopyPlan(
            TrackingDecision.DISABLED_BY_USER,
            "Tracking was switched off for this email.",
            False,
            False,
        )
    if is_empty_body(html, text):
        return CopyPlan(
            TrackingDecision.EMPTY_BODY,
            "The email has no visible content, so it is not tracked.",
            False,
            False,
        )
    if html is None:
        return CopyPlan(
            TrackingDecision.PLAIN_TEXT if link_tracking else TrackingDecision.DISABLED_BY_USER,
            "Plain-text email cannot carry a tracking pixel; only links are tracked."
            if link_tracking
            else "Plain-text email cannot carry a tracking pixel, and link tracking was off.",
            False,
            link_tracking,
        )
    return CopyPlan(TrackingDecision.TRACKED, "Tracked.", open_tracking, link_tracking)


class TrackingService:
    """Instrumentation and tracked-link reading for one installation (its keys and address)."""

    def __init__(self, codec: TokenCodec, base_url: str) -> None:
        self.codec = codec
        self.base_url = base_url.rstrip("/")
        self._edge = self.base_url + "/t/"

    # -- instrumenting (mail.ports.Instrumenter)

    def record_links(self, session: Session, message: Message) -> None:
        """Store the message's trackable destinations once, by position."""
        existing = set(
            session.scalars(
                select(MessageLink.position).where(MessageLink.message_id == message.id)
            )
        )
        for link in find_links(message.body_html, message.body_text):
            if link.position not in existing:
                session.add(
                    MessageLink(
                        message_id=message.id, position=link.position, url=link.url, text=link.text
                    )
                )

    def instrument_copy(
        self,
        session: Session,
        message: Message,
        copy: RecipientCopy,
        untracked: NotTracked | None = None,
    ) -> None:
        """Decide the copy's tracking, store the decision and its (tracked) bodies."""
        self.instrument(session, message, copy, untracked)

    def instrument(
        self,
        session: Session,
        message: Message,
        copy: RecipientCopy,
        untracked: NotTracked | None = None,
    ) -> Instrumented:
        """As :meth:`instrument_copy`, and say what was done (the CLI prints it).

        With ``untracked`` the copy keeps the bodies as written (no pixel, every link as
        it is) and takes that decision and reason, whatever the switches say.
        """
        if untracked is not None:
            plan = CopyPlan(untracked.decision, untracked.reason, False, False)
        else:
            plan = decide_tracking(
                html=message.body_html,
                text=message.body_text,
                open_tracking=message.open_tracking,
                link_tracking=message.link_tracking,
            )
        if copy.id is None:
            session.flush()
        result = instrument(
            html=message.body_html,
            text=message.body_text,
            copy_id=copy.id,
            codec=self.codec,
            base_url=self.base_url,
            open_tracking=plan.open_tracking,
            link_tracking=plan.link_tracking,
        )
        copy.decision = plan.decision
        copy.decision_reason = plan.reason
        copy.open_tracked = result.open_tracked
        copy.links_tracked = result.links_tracked
        copy.html_body = result.html
        copy.text_body = result.text
        return result

    # -- reading tracked URLs back (mail.ports.TrackedLinks)

    def is_tracking_url(self, url: str) -> bool:
        """A pixel or link of a tracking edge: this installation's, or by its path another's.

        Judged on the address a browser would load, resolved against this site the way a
        frame inside our pages resolves it: ``x/../t/o/…``, backslashes, scheme-relative
        and relative forms all count, so a quoted pixel cannot hide behind a spelling.
        """
        value = normalise_url(url)
        if value.startswith(self._edge):
            return True
        try:
            resolved = join_url(self._edge, value)
        except ValueError:
            resolved = value  # not a URL a browser loads: judge it as written
        try:
            path = urlsplit(resolved).path
        except ValueError:
            return True
        return path.startswith(_EDGE_PATHS)

    def destination(self, url: str) -> str | None:
        """A link as written: a tracked link of ours becomes its destination; None if it is
        a tracking URL that cannot be read, or leads nowhere a redirect would go."""
        value = url.strip()
        prefix = self._edge + "c/"
        if value.startswith(prefix):
            try:
                target = self.codec.read_click_token(value[len(prefix) :].split("?", 1)[0]).url
            except InvalidToken:
                return None
            # The same check the edge makes before it redirects.
            return target if location_for(target) is not None else None
        return None if self.is_tracking_url(value) else value

    def restore_in_text(self, text: str) -> str:
        """A plain-text body with our tracked URLs replaced by their destinations."""

        def swap(match: re.Match[str]) -> str:
            restored = self.destination(match.group(0))
            return restored if restored is not None else "[tracking link removed]"

        return _TRACKED_URL.sub(swap, text)
