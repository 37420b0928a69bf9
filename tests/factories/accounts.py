"""Plain factories for people: users, organisations and the mailboxes they send through.

Consent: a real organisation requires recipients' consent before it tracks them
(the models' default, right for real users), and its tracked copies carry an
opt-out footer. The organisations made here do neither, as an organisation
that chose not to require consent starts: the tests that use them are about
tracking itself (classification, figures, notifications, the Mail tab, the
bodies sent), and a recipient's consent is beside their point. Consent has
tests of its own (tests/privacy), whose organisations require it
(``require_consent``).
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.db import Database
from mailbeacon.models import MailboxConnection, Organisation, Security, User, UserRole

PASSWORD = "a long enough password"


def tracking_org(session: Session, name: str = "Acme") -> Organisation:
    """A new organisation that tracks without asking for consent (see the module's docstring)."""
    org = Organisation(name=name, consent_required=False, opt_out_footer=False)
    session.add(org)
    session.flush()
    return org


def require_consent(database: Database, user_id: int, required: bool = True) -> None:
    """Make the user's organisation require consent (or not) and add the opt-out footer
    (or not), as a new organisation starts."""
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        org = s.get(Organisation, user.organisation_id)
        assert org is not None
        org.consent_required = required
        org.opt_out_footer = required


def _without_consent(session: Session, user: User) -> None:
    org = session.get(Organisation, user.organisation_id)
    assert org is not None
    org.consent_required = False
    org.opt_out_footer = False


def make_user(session: Session, email: str = "seller@example.com") -> User:
    """A bare user, the admin of a new organisation (no password, no mailbox)."""
    org = tracking_org(session)
    user = User(
        organisation_id=org.id, email=email, display_name="Sally Seller", role=UserRole.ADMIN
    )
    session.add(user)
    session.flush()
    return user


def create_user(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    """A user who can sign in with ``PASSWORD``, as `mailbeacon user create` makes one."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        )
        _without_consent(s, user)
        return user.id


def make_demo_sender(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    """A user (in the named organisation, made if new) who sends through the demo mailbox."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        )
        _without_consent(s, user)
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
    """A user (the admin of a new organisation) with a mailbox connection to an SMTP server
    on loopback."""
    org = tracking_org(session)
    user = User(organisation_id=org.id, email=email, display_name=name, role=UserRole.ADMIN)
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
