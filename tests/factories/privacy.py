"""Plain factories for privacy: organisations that require consent, members, consents."""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy import select

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.db import Database
from mailbeacon.models import (
    ConsentMethod,
    ConsentState,
    MailboxConnection,
    Organisation,
    RecipientCopy,
    Security,
    User,
)
from mailbeacon.privacy import consent
from mailbeacon.privacy.audit import Actor, Channel
from mailbeacon.privacy.schemas import ConsentIn
from mailbeacon.runtime import Runtime
from tests.factories.accounts import PASSWORD

CONSENT_TEXT = "I agree that Privacy Co records when I open its emails and click their links."
TRACKED_LINK = re.compile(r"https?://[^\s\"'<>]+/t/c/[A-Za-z0-9_\-]+")
PIXEL = re.compile(r"https?://[^\s\"'<>]+/t/o/[A-Za-z0-9_\-]+\.gif")
OPT_OUT_LINK = re.compile(r"https?://[^\s\"'<>]+/p/opt-out/[A-Za-z0-9_\-]+")


def make_privacy_admin(
    database: Database, email: str = "alice@example.com", org: str = "Privacy Co"
) -> int:
    """The first user (so the admin) of a new organisation as it starts: consent required,
    opt-out footer on; with a mailbox on loopback that nothing here delivers through (the
    demo mailbox would not need consent: nobody outside the server receives it)."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name="Alice", organisation=org)
        )
        s.add(
            MailboxConnection(
                user_id=user.id,
                sender_name="Alice",
                sender_address=email,
                smtp_host="127.0.0.1",
                smtp_port=1,
                smtp_security=Security.NONE,
            )
        )
        return user.id


def make_member(database: Database, email: str = "mo@example.com", org: str = "Privacy Co") -> int:
    """Another user of the organisation: a member, with a mailbox of their own."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name="Mo", organisation=org)
        )
        s.add(
            MailboxConnection(
                user_id=user.id,
                sender_address=email,
                smtp_host="127.0.0.1",
                smtp_port=1,
                smtp_security=Security.NONE,
            )
        )
        return user.id


def set_policy(database: Database, user_id: int, **values: object) -> None:
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        org = s.get(Organisation, user.organisation_id)
        assert org is not None
        for name, value in values.items():
            setattr(org, name, value)


def record_consent(
    database: Database,
    runtime: Runtime,
    user_id: int,
    address: str,
    state: ConsentState = ConsentState.GRANTED,
    method: ConsentMethod = ConsentMethod.WEB_FORM,
) -> None:
    """Record a consent as a user of the organisation would on the contact's page."""
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        consent.set_consent(
            s,
            runtime.privacy_keys,
            Actor.of(user, Channel.WEB),
            address,
            ConsentIn(state=state, method=method, text=CONSENT_TEXT),
        )


@dataclass(frozen=True, slots=True)
class CopyView:
    id: int
    address: str
    decision: str
    decision_reason: str
    html: str
    text: str
    open_tracked: bool
    links_tracked: bool


def copies_of(database: Database, message_id: int) -> dict[str, CopyView]:
    with database.sessions() as s:
        return {
            c.address: CopyView(
                c.id,
                c.address,
                c.decision,
                c.decision_reason,
                c.html_body or "",
                c.text_body or "",
                c.open_tracked,
                c.links_tracked,
            )
            for c in s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message_id))
        }
