"""Tracking rules that need the database: deciding and instrumenting a copy."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbeacon.models import Message, MessageLink, RecipientCopy, TrackingDecision
from mailbeacon.tracking.instrument import Instrumented, find_links, instrument, is_empty_body
from mailbeacon.tracking.tokens import TokenCodec


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
        codec: TokenCodec,
        base_url: str,
    ) -> Instrumented:
        """Decide the copy's tracking, store the decision and its tracked bodies."""
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
            codec=codec,
            base_url=base_url,
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


tracking_service = TrackingService()
