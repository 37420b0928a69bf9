"""Plain factories for people: users, organisations and the mailboxes they send through."""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.db import Database
from mailbeacon.models import MailboxConnection, Organisation, Security, User

PASSWORD = "a long enough password"


def make_user(session: Session, email: str = "seller@example.com") -> User:
    """A bare user in a new organisation (no password, no mailbox)."""
    org = Organisation(name="Acme")
    session.add(org)
    session.flush()
    user = User(organisation_id=org.id, email=email, display_name="Sally Seller")
    session.add(user)
    session.flush()
    return user


def create_user(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    """A user who can sign in with ``PASSWORD``, as `mailbeacon user create` makes one."""
    with database.unit_of_work() as s:
        return account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        ).id


def make_demo_sender(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    """A user (in the named organisation, made if new) who sends through the demo mailbox."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        )
        account_service.use_demo_mailbox(s, user, port=2525)
        return user.id


def make_smtp_sender(
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
