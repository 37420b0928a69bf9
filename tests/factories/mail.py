"""Plain factories for emails: planned sends, delivered sends, bare messages."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import message_service
from mailbeacon.models import CopyStatus, Message, RecipientCopy, User
from mailbeacon.runtime import Runtime

# A link with an escaped query (plan) and without (send_mail), so that both the
# entity handling and plain titles are exercised.
OFFER_HTML = (
    '<p>Hello,</p><p>see our <a href="https://example.com/offer?x=1&amp;y=2">new offer</a> '
    'and <a href="https://example.com/pricing">pricing</a>.</p>'
)
SENT_HTML = (
    '<p>Hello,</p><p>see our <a href="https://example.com/offer">new offer</a> '
    'and <a href="https://example.com/pricing">pricing</a>.</p>'
)


def plan(
    session: Session, runtime: Runtime, user: User, draft: Draft | None = None, **fields: object
) -> Message:
    """Plan a send (the caller's unit of work commits it)."""
    if draft is None:
        values: dict[str, object] = {
            "to": ["ann@example.org"],
            "subject": "Hello",
            "body_html": OFFER_HTML,
        }
        values.update(fields)
        draft = Draft.model_validate(values)
    return message_service.plan_send(
        session, user, draft, instrumenter=runtime.tracking, consent=runtime.consent
    )


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: int
    copies: dict[str, int]  # address -> copy id
    user_id: int


def send_mail(
    database: Database,
    runtime: Runtime,
    user_id: int,
    to: tuple[str, ...] = ("ann@example.org",),
    *,
    subject: str = "Our offer",
    html: str | None = SENT_HTML,
    text: str | None = None,
    bcc: tuple[str, ...] = (),
    open_tracking: bool = True,
    link_tracking: bool = True,
) -> Sent:
    """Plan a send as compose does, and mark every copy delivered."""
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        draft = Draft(
            to=list(to),
            bcc=list(bcc),
            subject=subject,
            body_html=html,
            body_text=text,
            open_tracking=open_tracking,
            link_tracking=link_tracking,
        )
        message = message_service.plan_send(
            s, user, draft, instrumenter=runtime.tracking, consent=runtime.consent
        )
        now = utcnow()
        message.sent_at = now
        s.execute(
            update(RecipientCopy)
            .where(RecipientCopy.message_id == message.id)
            .values(status=CopyStatus.SENT, sent_at=now)
        )
        s.flush()
        copies = {c.address: c.id for c in s.query(RecipientCopy).filter_by(message_id=message.id)}
        return Sent(message.id, copies, user_id)


def make_message(
    session: Session,
    user: User | None = None,
    *,
    recipients: tuple[str, ...] = ("ann@example.org",),
    html: str | None = '<p>Hi <a href="https://example.com/offer">offer</a></p>',
    text: str | None = None,
    sent_at: datetime | None = None,
) -> tuple[Message, list[RecipientCopy]]:
    """A sent message and its copies, written directly (no planning, no instrumentation)."""
    message = Message(
        user_id=user.id if user else None,
        subject="Hello",
        body_html=html,
        body_text=text,
        sent_at=sent_at or utcnow(),
    )
    session.add(message)
    session.flush()
    copies = []
    for address in recipients:
        copy = RecipientCopy(
            message_id=message.id,
            address=address,
            decision="tracked",
            status=CopyStatus.SENT,
            sent_at=message.sent_at,
        )
        session.add(copy)
        copies.append(copy)
    session.flush()
    return message, copies
