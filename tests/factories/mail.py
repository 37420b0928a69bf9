"""Plain factory functions for senders, their mailbox connections and planned sends."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import message_service
from mailbeacon.models import MailboxConnection, Message, Organisation, Security, User
from mailbeacon.runtime import Runtime

OFFER_HTML = (
    '<p>Hello,</p><p>see our <a href="https://example.com/offer?x=1&amp;y=2">new offer</a> '
    'and <a href="https://example.com/pricing">pricing</a>.</p>'
)


def make_sender(
    session: Session,
    *,
    port: int,
    email: str = "sally@example.com",
    name: str = "Sally Seller",
    host: str = "127.0.0.1",
    security: Security = Security.NONE,
    username: str = "",
    sealed_password: str = "",
) -> User:
    """A user with an organisation and a mailbox connection to an SMTP server on loopback."""
    org = Organisation(name="Acme")
    session.add(org)
    session.flush()
    user = User(organisation_id=org.id, email=email, display_name=name)
    session.add(user)
    session.flush()
    session.add(
        MailboxConnection(
            user_id=user.id,
            sender_name=name,
            sender_address=email,
            smtp_host=host,
            smtp_port=port,
            smtp_security=security,
            smtp_username=username,
            smtp_password_encrypted=sealed_password,
        )
    )
    session.flush()
    return user


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
        session, user, draft, codec=runtime.codec, base_url=runtime.settings.BASE_URL
    )
