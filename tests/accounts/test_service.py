"""Accounts rules against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from mailbeacon.accounts import service as service_module
from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.security import EMAIL_LIMIT, hash_token
from mailbeacon.accounts.service import (
    InvalidInput,
    SignInRefused,
    TooManyAttempts,
    account_service,
)
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.datadir import new_secret
from mailbeacon.models import MailboxConnection, Organisation, Security, SignInAttempt, User

PASSWORD = "a long enough password"


def create(db: Database, email: str = "sally@example.com", org: str = "") -> int:
    with db.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name="Sally", organisation=org)
        )
        return user.id


def test_users_join_the_named_or_the_first_organisation(database: Database) -> None:
    a = create(database, "a@example.com", org="Acme")
    b = create(database, "b@example.com")
    c = create(database, "c@example.com", org="Other")
    with database.sessions() as s:
        users = {u.id: u for u in s.scalars(select(User))}
        orgs = {o.id: o.name for o in s.scalars(select(Organisation))}
    assert orgs[users[a].organisation_id] == "Acme"
    assert users[b].organisation_id == users[a].organisation_id
    assert orgs[users[c].organisation_id] == "Other"
    assert (users[a].password_hash or "").startswith("$argon2id$")


def test_emails_are_unique_whatever_their_case(database: Database) -> None:
    create(database, "Sally@Example.com")
    with pytest.raises(InvalidInput) as caught:
        create(database, "sally@example.COM")
    assert "already a user" in caught.value.errors["email"][0]
    with pytest.raises(InvalidInput) as caught:
        create(database, "not-an-email")
    assert "email" in caught.value.errors


def test_sign_in_opens_a_session_that_sign_out_ends(database: Database) -> None:
    create(database)
    with database.unit_of_work() as s:
        signed = account_service.sign_in(s, " SALLY@example.com ", PASSWORD, "203.0.113.5")
    with database.unit_of_work() as s:
        found = account_service.session_user(s, signed.session_token)
        assert found is not None
        assert found[0].email == "sally@example.com"
        assert found[1].csrf_secret == signed.csrf_secret
        # Only the hash of the token is stored.
        stored = s.execute(text("SELECT token_hash FROM user_sessions")).scalars().all()
        assert signed.session_token not in stored
    with database.unit_of_work() as s:
        account_service.sign_out(s, signed.session_token)
    with database.unit_of_work() as s:
        assert account_service.session_user(s, signed.session_token) is None


def test_expired_sessions_do_not_sign_anyone_in(database: Database) -> None:
    create(database)
    with database.unit_of_work() as s:
        signed = account_service.sign_in(s, "sally@example.com", PASSWORD, None)
    later = signed.expires_at + timedelta(seconds=1)
    with database.unit_of_work(immediate=False) as s:
        assert account_service.session_user(s, signed.session_token, now=later) is None
    # Reading a session never writes; the expired row goes at the user's next sign-in.
    with database.unit_of_work() as s:
        account_service.sign_in(s, "sally@example.com", PASSWORD, None, now=later)
    with database.unit_of_work(immediate=False) as s:
        hashes = s.execute(text("SELECT token_hash FROM user_sessions")).scalars().all()
        assert hash_token(signed.session_token) not in hashes


def test_wrong_password_and_unknown_email_get_the_same_answer(database: Database) -> None:
    create(database)
    messages = []
    for email, password in (
        ("sally@example.com", "wrong password"),
        ("nobody@example.com", PASSWORD),
    ):
        with database.unit_of_work() as s, pytest.raises(SignInRefused) as caught:
            account_service.sign_in(s, email, password, "203.0.113.5")
        messages.append(caught.value.message)
    assert messages[0] == messages[1] == "Wrong email or password."


def _fail(db: Database, email: str, ip: str, now: object = None) -> SignInRefused:
    # The caller's unit of work commits even though sign_in raised: that is how
    # the failures get counted (the views do the same), in a unit of work that
    # begins without the write lock, as the sign-in route's does.
    with db.unit_of_work(immediate=False) as s:
        try:
            account_service.sign_in(s, email, "wrong password", ip, now=now)  # type: ignore[arg-type]
        except SignInRefused as exc:
            return exc
    raise AssertionError("sign-in did not fail")


def test_five_failures_per_email_lock_that_email_for_a_while(database: Database) -> None:
    create(database)
    start = utcnow()
    for i in range(5):
        assert not isinstance(
            _fail(database, "sally@example.com", f"198.51.{i}.1", start), TooManyAttempts
        )
    refused = _fail(database, "sally@example.com", "192.0.2.1", start + timedelta(minutes=1))
    assert isinstance(refused, TooManyAttempts)
    assert refused.message == "Too many attempts, try again in 14 minutes."
    # Even the right password is refused while the lock holds...
    with database.unit_of_work() as s, pytest.raises(TooManyAttempts):
        account_service.sign_in(
            s, "sally@example.com", PASSWORD, "192.0.2.1", now=start + timedelta(minutes=2)
        )
    # ...and works once the failures have left the window.
    with database.unit_of_work() as s:
        account_service.sign_in(
            s,
            "sally@example.com",
            PASSWORD,
            "192.0.2.1",
            now=start + timedelta(minutes=15, seconds=1),
        )
    # Refused attempts were not counted: the lock did not extend itself.
    with database.sessions() as s:
        assert (
            len(
                s.scalars(
                    select(SignInAttempt).where(
                        SignInAttempt.key == "email:sally@example.com",
                        SignInAttempt.succeeded.is_(False),
                    )
                ).all()
            )
            == 0
        )  # forgotten after the success


def test_twenty_failures_from_one_network_lock_that_network(database: Database) -> None:
    create(database)
    start = utcnow()
    for i in range(20):
        _fail(database, f"guess{i}@example.com", f"203.0.113.{i}", start)
    refused = _fail(database, "another@example.com", "203.0.113.200", start)
    assert isinstance(refused, TooManyAttempts)
    assert refused.minutes == 15
    # Another network is not affected.
    with database.unit_of_work() as s:
        account_service.sign_in(s, "sally@example.com", PASSWORD, "198.51.100.1", now=start)


def test_parallel_wrong_passwords_get_no_more_checks_than_the_limit(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    create(database)
    checked = 0
    count_lock = threading.Lock()
    real_verify = service_module.verify_password

    def counting_verify(password_hash: str | None, password: str) -> bool:
        nonlocal checked
        with count_lock:
            checked += 1
        return real_verify(password_hash, password)

    monkeypatch.setattr(service_module, "verify_password", counting_verify)
    start = threading.Barrier(30)

    def attempt(i: int) -> type[SignInRefused]:
        start.wait()
        # Each attempt in its own session and transaction, as parallel requests are.
        return type(_fail(database, "sally@example.com", f"198.51.100.{i}"))

    with ThreadPoolExecutor(max_workers=30) as pool:
        outcomes = list(pool.map(attempt, range(30)))
    assert checked == EMAIL_LIMIT.failures
    assert outcomes.count(SignInRefused) == EMAIL_LIMIT.failures
    assert outcomes.count(TooManyAttempts) == 30 - EMAIL_LIMIT.failures


def test_the_password_check_holds_no_write_lock(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Argon2 takes a tenth of a second; on SQLite a write lock held meanwhile
    # would stall the ingest writer for as long, at every sign-in.
    create(database)
    real_verify = service_module.verify_password
    others_wrote: list[bool] = []

    def verify_while_another_writes(password_hash: str | None, password: str) -> bool:
        with database.engine.connect() as conn:
            if database.is_sqlite:
                conn.exec_driver_sql("PRAGMA busy_timeout=200")
                conn.rollback()
            with conn.execution_options(sqlite_immediate=True).begin():
                conn.execute(text("UPDATE users SET display_name = 'Sal'"))
            others_wrote.append(True)
        return real_verify(password_hash, password)

    monkeypatch.setattr(service_module, "verify_password", verify_while_another_writes)
    _fail(database, "sally@example.com", "198.51.100.1")
    # As the sign-in route runs it: a unit of work that begins without the lock.
    with database.unit_of_work(immediate=False) as s:
        account_service.sign_in(s, "sally@example.com", PASSWORD, "198.51.100.1")
    assert others_wrote == [True, True]


def test_api_tokens_authenticate_until_revoked(database: Database) -> None:
    create(database)
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        token, plain = account_service.create_api_token(s, user, "CRM sync")
        token_id = token.id
    with database.unit_of_work() as s:
        found = account_service.api_token_user(s, plain)
        assert found is not None
        assert found[0].email == "sally@example.com"
        assert account_service.api_token_user(s, plain + "x") is None
        assert plain not in s.execute(text("SELECT token_hash FROM api_tokens")).scalars().all()
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        account_service.revoke_api_token(s, user, token_id)
    with database.unit_of_work() as s:
        assert account_service.api_token_user(s, plain) is None


def test_mailbox_password_is_stored_sealed(database: Database) -> None:
    create(database)
    box = CredentialBox(new_secret(32).encode()[:32])
    form = {
        "sender_name": "Sally",
        "sender_address": "sally@example.com",
        "smtp_host": "SMTP.Example.com",
        "smtp_port": "587",
        "smtp_security": "starttls",
        "smtp_username": "sally",
        "smtp_password": "hunter2-app-password",
    }
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        account_service.save_mailbox(s, user, account_service.parse_mailbox_settings(form), box)
    with database.unit_of_work() as s:
        raw = s.execute(text("SELECT * FROM mailbox_connections")).mappings().one()
        assert "hunter2-app-password" not in " ".join(str(v) for v in raw.values())
        assert raw["smtp_host"] == "smtp.example.com"
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == "hunter2-app-password"
        # Saving again without a password keeps the stored one.
        account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings({**form, "smtp_password": ""}), box
        )
    with database.sessions() as s:
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == "hunter2-app-password"
        mailbox = s.scalars(select(MailboxConnection)).one()
        assert mailbox.smtp_security == Security.STARTTLS


@pytest.mark.parametrize(
    "change",
    [
        {"smtp_host": "smtp.attacker.example"},
        {"smtp_port": "465"},
        {"smtp_security": "tls"},
        {"smtp_username": "mallory"},
    ],
)
def test_a_stored_password_never_follows_a_changed_server(
    database: Database, change: dict[str, str]
) -> None:
    create(database)
    box = CredentialBox(new_secret(32).encode()[:32])
    form = {
        "sender_address": "sally@example.com",
        "smtp_host": "smtp.example.com",
        "smtp_port": "587",
        "smtp_security": "starttls",
        "smtp_username": "sally",
        "smtp_password": "hunter2-app-password",
    }
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        saved = account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(form), box
        )
        assert not saved.password_dropped
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        changed = {**form, **change, "smtp_password": ""}
        saved = account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(changed), box
        )
        assert saved.password_dropped
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == ""
        # With a new password typed in, the change needs nothing more.
        retyped = {**form, **change, "smtp_password": "another-password"}
        saved = account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(retyped), box
        )
        assert not saved.password_dropped
    with database.sessions() as s:
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == "another-password"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"smtp_security": "none"}, "smtp_security", "loopback"),
        ({"smtp_port": "abc"}, "smtp_port", "between 1 and 65535"),
        ({"smtp_port": "70000"}, "smtp_port", "between 1 and 65535"),
        ({"smtp_host": "smtp example com"}, "smtp_host", "not a host name"),
        ({"smtp_host": ""}, "smtp_host", "Enter the SMTP server"),
        ({"sender_address": "sally at example"}, "sender_address", "not a valid address"),
        ({"smtp_security": "ssl3"}, "smtp_security", "Choose implicit TLS"),
    ],
)
def test_mailbox_settings_errors_name_the_field(
    change: dict[str, str], field: str, words: str
) -> None:
    form = {
        "sender_name": "",
        "sender_address": "sally@example.com",
        "smtp_host": "smtp.example.com",
        "smtp_port": "465",
        "smtp_security": "tls",
        "smtp_username": "",
        "smtp_password": "",
    }
    with pytest.raises(InvalidInput) as caught:
        account_service.parse_mailbox_settings({**form, **change})
    assert words in " ".join(caught.value.errors[field])


def test_plain_smtp_is_allowed_to_loopback() -> None:
    form = {
        "sender_address": "sally@example.com",
        "smtp_host": "127.0.0.1",
        "smtp_port": "2525",
        "smtp_security": "none",
    }
    assert account_service.parse_mailbox_settings(form).smtp_security == Security.NONE
