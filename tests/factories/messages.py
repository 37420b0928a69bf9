"""Plain factory functions for messages and their recipient copies."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from mailbeacon.kit.clock import utcnow
from mailbeacon.models import CopyStatus, Message, Organisation, RecipientCopy, User


def make_user(session: Session, email: str = "seller@example.com") -> User:
    org = Organisation(name="Acme")
    session.add(org)
    session.flush()
    user = User(organisation_id=org.id, email=email, display_name="Sally Seller")
    session.add(user)
    session.flush()
    return user


def make_message(
    session: Session,
    user: User | None = None,
    *,
    recipients: tuple[str, ...] = ("ann@example.org",),
    html: str | None = '<p>Hi <a href="https://example.com/offer">offer</a></p>',
    text: str | None = None,
    sent_at: datetime | None = None,
) -> tuple[Message, list[RecipientCopy]]:
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
