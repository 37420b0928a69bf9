"""Accounts rules against a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import select, text

from mailbeacon.accounts import service as service_module
from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.security import ACCOUNT_NETWORK_BACKOFF, NETWORK_LIMIT, hash_token
from mailbeacon.accounts.service import (
    InvalidInput,
    SignInRefused,
    TooManyAttempts,
    account_service,
)
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.datadir import new_secret
from mailbeacon.kit.netpolicy import AddressPolicy, mail_server_policy
from mailbeacon.models import MailboxConnection, Organisation, Security, SignInAttempt, User
from mailbeacon.models.account import TokenScope
from tests.factories.accounts import PASSWORD
from tests.network import HostTable

# The policy a default install applies to SMTP hosts typed into Settings > Email sync.
MAIL_SERVERS = AddressPolicy()


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


def test_failures_from_one_network_make_its_next_try_wait_longer_and_longer(
    database: Database,
) -> None:
    create(database)
    backoff = ACCOUNT_NETWORK_BACKOFF
    start = utcnow()
    for _ in range(backoff.free_failures):
        assert not isinstance(
            _fail(database, "sally@example.com", "198.51.100.7", start), TooManyAttempts
        )
    now = start
    for waited in (5, 10, 20, 40):
        refused = _fail(database, "sally@example.com", "198.51.100.99", now)  # same /24
        assert isinstance(refused, TooManyAttempts)
        assert refused.retry_after == waited
        assert refused.message == f"Too many attempts, try again in {waited} seconds."
        # Even the right password waits: otherwise the wait would not slow guessing.
        with database.unit_of_work() as s, pytest.raises(TooManyAttempts):
            account_service.sign_in(s, "sally@example.com", PASSWORD, "198.51.100.7", now=now)
        now += timedelta(seconds=waited)
        # Once the wait is over, the password is checked (and this one fails again).
        refused = _fail(database, "sally@example.com", "198.51.100.7", now)
        assert not isinstance(refused, TooManyAttempts)
    # Refused attempts were not counted: the waits doubled once per checked failure.
    with database.sessions() as s:
        failures = s.scalars(
            select(SignInAttempt).where(SignInAttempt.key.startswith("account:"))
        ).all()
    assert len(failures) == backoff.free_failures + 4


def test_the_wait_is_capped_and_a_success_forgets_the_failures(database: Database) -> None:
    create(database)
    backoff = ACCOUNT_NETWORK_BACKOFF
    now = utcnow()
    waits = []
    while len(waits) < 12:
        refused = _fail(database, "sally@example.com", "203.0.113.4", now)
        if isinstance(refused, TooManyAttempts):
            waits.append(refused.retry_after)
            now += timedelta(seconds=refused.retry_after)
    assert waits == [5, 10, 20, 40, 80, 160, 320, 640, 900, 900, 900, 900]
    assert not isinstance(_fail(database, "sally@example.com", "203.0.113.4", now), TooManyAttempts)
    refused = _fail(database, "sally@example.com", "203.0.113.4", now)
    assert isinstance(refused, TooManyAttempts)
    assert refused.message == "Too many attempts, try again in 15 minutes."
    now += backoff.longest_wait
    with database.unit_of_work(immediate=False) as s:
        account_service.sign_in(s, "sally@example.com", PASSWORD, "203.0.113.4", now=now)
    # The next mistake from there is free again.
    assert not isinstance(_fail(database, "sally@example.com", "203.0.113.4", now), TooManyAttempts)


def test_one_network_failing_many_accounts_is_capped(database: Database) -> None:
    create(database)
    start = utcnow()
    for i in range(NETWORK_LIMIT.failures):
        _fail(database, f"guess{i}@example.com", f"203.0.113.{i}", start)
    refused = _fail(database, "another@example.com", "203.0.113.200", start)
    assert isinstance(refused, TooManyAttempts)
    assert refused.retry_after == NETWORK_LIMIT.window.total_seconds()
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
    # All from one network: the free tries are checked, the rest wait for them.
    free = ACCOUNT_NETWORK_BACKOFF.free_failures
    assert checked == free
    assert outcomes.count(SignInRefused) == free
    assert outcomes.count(TooManyAttempts) == 30 - free


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


def test_api_tokens_carry_their_scopes_and_stop_working_when_they_expire(
    database: Database,
) -> None:
    create(database)
    now = utcnow()
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        token, plain = account_service.create_api_token(
            s, user, "Reports", ["send", " READ "], expires_in_days=30, now=now
        )
        assert token.scopes == "read send"
        assert token.expires_at == now + timedelta(days=30)
        _, forever = account_service.create_api_token(s, user, "Forever", ["admin"])
    with database.unit_of_work(immediate=False) as s:
        found = account_service.api_token_user(s, plain, now=now + timedelta(days=29))
        assert found is not None
        assert found[1].scope_set == {TokenScope.READ, TokenScope.SEND}
        assert account_service.api_token_user(s, plain, now=now + timedelta(days=30)) is None
        found = account_service.api_token_user(s, forever, now=now + timedelta(days=3650))
        assert found is not None
        assert found[1].scope_set == {TokenScope.ADMIN}


@pytest.mark.parametrize(
    ("scopes", "days", "field", "words"),
    [
        ([], None, "scopes", "at least one"),
        (["read", "root"], None, "scopes", "no scope 'root'"),
        (["read"], 0, "expires_in_days", "between 1 and"),
        (["read"], 100_000, "expires_in_days", "between 1 and"),
    ],
)
def test_api_token_scopes_and_expiry_are_checked(
    database: Database, scopes: list[str], days: int | None, field: str, words: str
) -> None:
    create(database)
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        with pytest.raises(InvalidInput) as caught:
            account_service.create_api_token(s, user, "CRM", scopes, days)
    assert words in " ".join(caught.value.errors[field])


def test_mailbox_password_is_stored_sealed(database: Database, hosts: HostTable) -> None:
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
        account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(form, MAIL_SERVERS), box
        )
    with database.unit_of_work() as s:
        raw = s.execute(text("SELECT * FROM mailbox_connections")).mappings().one()
        assert "hunter2-app-password" not in " ".join(str(v) for v in raw.values())
        assert raw["smtp_host"] == "smtp.example.com"
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == "hunter2-app-password"
        # Saving again without a password keeps the stored one.
        account_service.save_mailbox(
            s,
            user,
            account_service.parse_mailbox_settings({**form, "smtp_password": ""}, MAIL_SERVERS),
            box,
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
    database: Database, change: dict[str, str], hosts: HostTable
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
            s, user, account_service.parse_mailbox_settings(form, MAIL_SERVERS), box
        )
        assert not saved.password_dropped
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        changed = {**form, **change, "smtp_password": ""}
        saved = account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(changed, MAIL_SERVERS), box
        )
        assert saved.password_dropped
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        assert account_service.smtp_params(s, user, box).password == ""
        # With a new password typed in, the change needs nothing more.
        retyped = {**form, **change, "smtp_password": "another-password"}
        saved = account_service.save_mailbox(
            s, user, account_service.parse_mailbox_settings(retyped, MAIL_SERVERS), box
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
    change: dict[str, str], field: str, words: str, hosts: HostTable
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
        account_service.parse_mailbox_settings({**form, **change}, MAIL_SERVERS)
    assert words in " ".join(caught.value.errors[field])


def test_plain_smtp_is_allowed_to_loopback_where_the_operator_allows_loopback() -> None:
    form = {
        "sender_address": "sally@example.com",
        "smtp_host": "127.0.0.1",
        "smtp_port": "2525",
        "smtp_security": "none",
    }
    allowed = AddressPolicy(allow_loopback=True)
    assert account_service.parse_mailbox_settings(form, allowed).smtp_security == Security.NONE


HOST_FORM = {
    "sender_address": "sally@example.com",
    "smtp_port": "465",
    "smtp_security": "tls",
}


@pytest.mark.parametrize(
    ("host", "words"),
    [
        (
            "10.1.2.3",
            "This address is on a private network; the operator has not allowed "
            "private mail servers.",
        ),
        ("100.64.0.9", "on a private network"),
        ("[fd12:3456::1]", "on a private network"),
        ("169.254.169.254", "This address belongs to a cloud provider's metadata service"),
        ("[fd00:ec2::254]", "metadata service"),
        ("metadata.google.internal", "This host name is a cloud provider's metadata service"),
        ("169.254.10.1", "This address is link-local"),
        ("[fe80::1]", "link-local"),
        ("[::ffff:169.254.1.1]", "link-local"),
        ("127.0.0.1", "This address is this machine itself (loopback)"),
        ("localhost", "This host name points to an address that is this machine itself"),
        ("0.0.0.0", "reserved, multicast or broadcast"),  # noqa: S104 (a host typed in)
        ("224.0.0.251", "reserved, multicast or broadcast"),
        ("255.255.255.255", "reserved, multicast or broadcast"),
        ("192.0.2.10", "reserved, multicast or broadcast"),
        ("intranet.corp.test", "This host name points to an address that is on a private network"),
        ("mixed.corp.test", "This host name points to an address that is on a private network"),
    ],
)
def test_a_host_the_address_policy_refuses_is_a_field_error_on_the_host(
    host: str, words: str, hosts: HostTable
) -> None:
    hosts.add("intranet.corp.test", "10.20.30.40")
    # One public address does not excuse the other: the connection could go to either.
    hosts.add("mixed.corp.test", "93.184.215.14", "10.20.30.41")
    policy = mail_server_policy(Settings())  # what an operator gets without changing anything
    with pytest.raises(InvalidInput) as caught:
        account_service.parse_mailbox_settings({**HOST_FORM, "smtp_host": host}, policy)
    assert list(caught.value.errors) == ["smtp_host"]
    assert words in " ".join(caught.value.errors["smtp_host"])


def test_the_operator_may_allow_private_mail_servers_but_never_metadata_or_link_local(
    hosts: HostTable,
) -> None:
    policy = AddressPolicy(allow_private=True)
    for host in ("10.1.2.3", "192.168.1.25", "[fd12:3456::1]"):
        parsed = account_service.parse_mailbox_settings({**HOST_FORM, "smtp_host": host}, policy)
        assert parsed.smtp_host == host.strip("[]")
    for host in ("169.254.169.254", "100.100.100.200", "[fd00:ec2::254]", "169.254.0.7"):
        with pytest.raises(InvalidInput):
            account_service.parse_mailbox_settings({**HOST_FORM, "smtp_host": host}, policy)


def test_a_host_name_that_does_not_resolve_can_still_be_saved(hosts: HostTable) -> None:
    # DNS may be down right now; the connection test says what it finds.
    parsed = account_service.parse_mailbox_settings(
        {**HOST_FORM, "smtp_host": "smtp.example.com"}, AddressPolicy()
    )
    assert parsed.smtp_host == "smtp.example.com"
    assert hosts.asked == ["smtp.example.com"]
