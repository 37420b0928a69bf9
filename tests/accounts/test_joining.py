"""The first account of a fresh server, invitations, and the user's time zone, against a
real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbeacon.accounts import repository
from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.security import hash_password
from mailbeacon.accounts.service import (
    INVITATION_LIFETIME,
    FirstUserExists,
    InvalidInput,
    InvitationInvalid,
    account_service,
)
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.errors import Forbidden
from mailbeacon.models import Invitation, User, UserRole
from tests.factories.accounts import PASSWORD

HASH = hash_password(PASSWORD)


def first_user(db: Database, email: str = "sally@example.com") -> int:
    with db.unit_of_work() as s:
        data = NewUser(email=email, password=PASSWORD, name="Sally", organisation="Acme")
        return account_service.create_first_user(s, data, HASH).id


@pytest.fixture
def counts_together(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each caller of ``count_users`` waits (up to a second) for the other after reading:
    without a lock before the check, both read "no user" and both create one."""
    barrier = threading.Barrier(2)
    read = repository.count_users

    def count_then_wait(session: Session) -> int:
        found = read(session)
        # Broken: the other caller is queued on the lock, the race is held off.
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=1)
        return found

    monkeypatch.setattr(repository, "count_users", count_then_wait)


def test_racing_first_run_requests_create_one_user(
    database: Database, counts_together: None
) -> None:
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(first_user, database, f"first{i}@example.com") for i in range(2)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=60))
            except FirstUserExists:
                outcomes.append("exists")
    assert outcomes.count("exists") == 1
    with database.unit_of_work(immediate=False) as s:
        users = s.scalars(select(User)).all()
        assert len(users) == 1
        assert users[0].role == UserRole.ADMIN


def test_first_run_is_refused_once_a_user_exists(database: Database) -> None:
    first_user(database)
    with pytest.raises(FirstUserExists):
        first_user(database, "second@example.com")


def test_the_first_user_is_the_admin_of_the_named_organisation(database: Database) -> None:
    user_id = first_user(database)
    with database.unit_of_work(immediate=False) as s:
        user = s.get(User, user_id)
        assert user is not None
        assert user.is_admin
        assert account_service.organisation_name(s, user) == "Acme"


def invite(db: Database, admin_id: int, email: str, now: datetime | None = None) -> str:
    with db.unit_of_work() as s:
        admin = s.get(User, admin_id)
        assert admin is not None
        _, token = account_service.create_invitation(s, admin, email, now=now)
        return token


def accept(db: Database, token: str, name: str = "Otto", now: datetime | None = None) -> int:
    with db.unit_of_work() as s:
        email = account_service.invitation_for(s, token, now=now).email
        data = NewUser(email=email, name=name, password=PASSWORD)
        return account_service.accept_invitation(s, token, data, HASH, now=now).id


def test_an_invitation_joins_the_admins_organisation_as_a_member_once(
    database: Database,
) -> None:
    admin_id = first_user(database)
    token = invite(database, admin_id, "Otto@Example.com")
    with database.unit_of_work(immediate=False) as s:
        stored = s.scalars(select(Invitation)).one()
        assert token not in stored.token_hash  # only the hash is kept
        assert stored.email == "otto@example.com"
    member_id = accept(database, token)
    with database.unit_of_work(immediate=False) as s:
        member, admin = s.get(User, member_id), s.get(User, admin_id)
        assert member is not None and admin is not None
        assert member.email == "otto@example.com"
        assert member.role == UserRole.MEMBER
        assert member.organisation_id == admin.organisation_id
    with pytest.raises(InvitationInvalid):
        accept(database, token, "Otto again")
    with database.unit_of_work(immediate=False) as s:
        assert s.scalar(select(func.count()).select_from(User)) == 2


def test_an_expired_invitation_opens_nothing(database: Database) -> None:
    admin_id = first_user(database)
    sent = utcnow() - INVITATION_LIFETIME - timedelta(minutes=1)
    token = invite(database, admin_id, "late@example.com", now=sent)
    with database.unit_of_work(immediate=False) as s, pytest.raises(InvitationInvalid):
        account_service.invitation_for(s, token)
    data = NewUser(email="late@example.com", name="Late", password=PASSWORD)
    with database.unit_of_work() as s, pytest.raises(InvitationInvalid):
        account_service.accept_invitation(s, token, data, HASH)
    # Still valid a minute before it expires.
    fresh = invite(database, admin_id, "early@example.com")
    almost = utcnow() + INVITATION_LIFETIME - timedelta(minutes=1)
    accept(database, fresh, now=almost)


def test_racing_uses_of_one_invitation_create_one_user(database: Database) -> None:
    admin_id = first_user(database)
    token = invite(database, admin_id, "twice@example.com")

    def use() -> str:
        try:
            accept(database, token)
        except InvitationInvalid:
            return "refused"
        return "joined"

    with ThreadPoolExecutor(2) as pool:
        outcomes = sorted(f.result(timeout=60) for f in [pool.submit(use), pool.submit(use)])
    assert outcomes == ["joined", "refused"]


def test_only_an_admin_invites_and_not_an_existing_user(database: Database) -> None:
    admin_id = first_user(database)
    member_id = accept(database, invite(database, admin_id, "member@example.com"))
    with database.unit_of_work() as s:
        member = s.get(User, member_id)
        assert member is not None
        with pytest.raises(Forbidden):
            account_service.create_invitation(s, member, "friend@example.com")
    with database.unit_of_work() as s:
        admin = s.get(User, admin_id)
        assert admin is not None
        with pytest.raises(InvalidInput):
            account_service.create_invitation(s, admin, "member@example.com")


def test_a_withdrawn_invitation_opens_nothing(database: Database) -> None:
    admin_id = first_user(database)
    token = invite(database, admin_id, "gone@example.com")
    with database.unit_of_work() as s:
        admin = s.get(User, admin_id)
        assert admin is not None
        (pending,) = account_service.pending_invitations(s, admin)
        account_service.revoke_invitation(s, admin, pending.id)
    with pytest.raises(InvitationInvalid):
        accept(database, token)


def test_the_time_zone_must_be_a_known_zone(database: Database) -> None:
    user_id = first_user(database)
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        account_service.save_time_zone(s, user, "America/New_York")
        with pytest.raises(InvalidInput):
            account_service.save_time_zone(s, user, "Mars/Olympus")
        assert user.time_zone == "America/New_York"
