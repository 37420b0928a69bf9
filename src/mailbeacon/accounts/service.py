"""Accounts rules: users, sign-in, sessions, API tokens and the mailbox connection."""

from __future__ import annotations

import hashlib
import math
import threading
import zoneinfo
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from mailbeacon.accounts import repository
from mailbeacon.accounts.schemas import MailboxSettings, NewUser, TrackingOptions
from mailbeacon.accounts.security import (
    ACCOUNT_NETWORK_BACKOFF,
    NETWORK_LIMIT,
    SESSION_LIFETIME,
    SESSION_TOUCH_INTERVAL,
    hash_password,
    hash_token,
    ip_prefix,
    new_api_token,
    new_secret,
    password_needs_rehash,
    verify_password,
)
from mailbeacon.config import DEMO_SMTP_HOST
from mailbeacon.kit.addresses import parse_address
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from mailbeacon.kit.net import is_loopback_host
from mailbeacon.kit.netpolicy import AddressPolicy, AddressRefused, HostNotFound, vet_host
from mailbeacon.kit.validation import field_errors
from mailbeacon.models import (
    ApiToken,
    Invitation,
    MailboxConnection,
    Organisation,
    Security,
    User,
    UserRole,
    UserSession,
)
from mailbeacon.models.account import TokenScope

DEFAULT_ORGANISATION = "My organisation"
# How long an invitation link can be used (once).
INVITATION_LIFETIME = timedelta(days=7)
# The longest an API token may be minted for (about five years).
MAX_TOKEN_DAYS = 5 * 366

__all__ = ["InvalidInput"]


class SignInRefused(DomainError):
    """Wrong email or password; deliberately does not say which."""

    def __init__(self, message: str = "Wrong email or password.") -> None:
        super().__init__(message)
        self.message = message


class TooManyAttempts(SignInRefused):
    """Refused without checking the password: try again in ``retry_after`` seconds."""

    def __init__(self, retry_after: timedelta) -> None:
        seconds = max(1, math.ceil(retry_after.total_seconds()))
        if seconds < 120:
            when = f"{seconds} second{'' if seconds == 1 else 's'}"
        else:
            when = f"{math.ceil(seconds / 60)} minutes"
        super().__init__(f"Too many attempts, try again in {when}.")
        self.retry_after = seconds


class FirstUserExists(Conflict):
    """The first-run page was used after a user exists: sign-in is the way in."""


class InvitationInvalid(NotFound):
    """An invitation link that is unknown, used or expired."""

    def __init__(self) -> None:
        super().__init__(
            "This invitation link is not valid any more: it was used, it expired "
            "or it was withdrawn. Ask for a new one."
        )


class NoMailboxConnection(Conflict):
    """The user has not connected a mailbox yet."""


class ApiTokenNotFound(NotFound):
    """No such API token among the user's own."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """A new browser session; the token is shown once (in the cookie), only its hash is kept."""

    user: User
    session_token: str
    csrf_secret: str
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class SmtpParams:
    host: str
    port: int
    security: Security
    username: str
    password: str
    # The built-in demo mailbox: the one connection that may use loopback by default.
    demo: bool = False


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What a connection test found: the stage it reached and a message about it."""

    ok: bool
    stage: str  # "connect" | "tls" | "auth" | "ok"
    message: str


# Tries SMTP settings the way the outbox worker would use them (the mail domain
# provides it; the composition root wires it in).
SmtpProbe = Callable[[SmtpParams], Awaitable[ProbeResult]]


@dataclass(frozen=True, slots=True)
class SmtpProbeBox:
    """The SMTP probe as the application provides it to the Settings pages."""

    probe: SmtpProbe


@dataclass(frozen=True, slots=True)
class ConnectionReport:
    """The outcome of "Test connection", in words a person can act on."""

    ok: bool
    stage: str
    headline: str
    detail: str

    @property
    def summary(self) -> str:
        return f"{self.headline} {self.detail}".strip()


@dataclass(frozen=True, slots=True)
class MailboxSaved:
    """The saved connection, and whether its stored password had to be dropped."""

    mailbox: MailboxConnection
    password_dropped: bool
    # The IMAP server changed with no password for it (see ``save_mailbox``).
    imap_password_dropped: bool = False


@dataclass(frozen=True, slots=True)
class ImapParams:
    host: str
    port: int
    security: Security
    username: str
    password: str


@dataclass(frozen=True, slots=True)
class ImapProbeResult:
    """What an IMAP test found: the stage it reached, the folders and the Sent folder."""

    ok: bool
    stage: str  # "connect" | "tls" | "auth" | "ok"
    message: str
    folders: tuple[str, ...] = ()
    sent_folder: str = ""  # by RFC 6154 SPECIAL-USE, else the usual names; "" if none


# Signs in to IMAP and lists the folders as the sync worker would (the sync domain
# provides it; the composition root wires it in).
ImapProbe = Callable[[ImapParams], Awaitable[ImapProbeResult]]


@dataclass(frozen=True, slots=True)
class ImapProbeBox:
    """The IMAP probe as the application provides it to the Settings pages and API."""

    probe: ImapProbe


@dataclass(frozen=True, slots=True)
class ImapReport:
    """The outcome of testing IMAP, in words a person can act on."""

    ok: bool
    headline: str
    detail: str
    folders: tuple[str, ...]
    sent_folder: str

    @property
    def summary(self) -> str:
        return f"{self.headline} {self.detail}".strip()


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """Where the mailbox sync stands, for Settings: the last success and the last error."""

    last_success_at: datetime | None
    last_error: str
    last_error_at: datetime | None
    next_attempt_at: datetime | None
    first_sync_done: bool
    stored_count: int


SERVER_CHANGED_NOTICE = (
    "Enter the password again: the server changed. The stored password was removed "
    "so that it is never sent to a server it was not entered for."
)


IMAP_SERVER_CHANGED_NOTICE = (
    "Enter the password again: the IMAP server changed. No stored password is sent to "
    "a server it was not entered for, the SMTP one included."
)


def _imap_server_changed(mailbox: MailboxConnection, data: MailboxSettings) -> bool:
    """Whether the settings point IMAP at another server or account than before."""
    return (
        mailbox.is_demo
        or mailbox.imap_host != data.imap_host
        or mailbox.imap_port != data.imap_port
        or str(mailbox.imap_security) != str(data.imap_security)
        or mailbox.imap_username != data.imap_username
    )


def _smtp_server_changed(mailbox: MailboxConnection, data: MailboxSettings) -> bool:
    """Whether the settings point the stored password at another server or account."""
    return (
        mailbox.smtp_host != data.smtp_host
        or mailbox.smtp_port != data.smtp_port
        or str(mailbox.smtp_security) != str(data.smtp_security)
        or mailbox.smtp_username != data.smtp_username
    )


class _AttemptGate:
    """Serialises sign-in attempts per rate-limit key until the attempt's transaction ends.

    PostgreSQL: a transaction-level advisory lock per key, so every process and
    machine queues on it. SQLite: a lock per stripe of keys in this process (one
    machine, and the web app runs in one process); released when the session's
    transaction ends, after its failures are committed for the next one to count.
    """

    STRIPES = 64
    WAIT_SECONDS = 30.0

    def __init__(self) -> None:
        self._stripes = [threading.Lock() for _ in range(self.STRIPES)]

    def enter(self, session: Session, keys: Sequence[str]) -> None:
        ids = sorted({_lock_id(k) for k in keys})  # one order everywhere: no deadlock
        if session.get_bind().dialect.name == "postgresql":
            repository.lock_attempt_keys(session, ids)
            return
        held: set[int] = session.info.setdefault(_STRIPES_HELD, set())
        if not session.info.get(_STRIPES_RELEASER):
            event.listen(session, "after_transaction_end", self._release)
            session.info[_STRIPES_RELEASER] = True
        # Waiting holds no pooled connection: parallel attempts could exhaust the pool.
        for stripe in sorted({i % self.STRIPES for i in ids} - held):
            if not self._stripes[stripe].acquire(timeout=self.WAIT_SECONDS):
                self._release_held(held)
                raise TooManyAttempts(timedelta(minutes=1))
            held.add(stripe)
        try:
            session.connection()  # begin the transaction whose end releases the stripes
        except BaseException:
            self._release_held(held)
            raise

    def _release(self, session: Session, transaction: SessionTransaction) -> None:
        if transaction.parent is not None:
            return  # a savepoint or subtransaction: the attempt is not committed yet
        self._release_held(session.info.get(_STRIPES_HELD, set()))

    def _release_held(self, held: set[int]) -> None:
        while held:
            self._stripes[held.pop()].release()


_STRIPES_HELD = "mailbeacon.sign_in_stripes"
_STRIPES_RELEASER = "mailbeacon.sign_in_releaser"
_attempt_gate = _AttemptGate()


def _lock_id(key: str) -> int:
    """A stable signed 64-bit number for a rate-limit key (PostgreSQL advisory lock id)."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)


@contextmanager
def _pre_check_reader(session: Session) -> Iterator[Session]:
    """Where sign-in reads before the password check (see ``sign_in``)."""
    if session.get_bind().dialect.name != "sqlite":
        yield session
        return
    # A read-only session of its own, never holding (or waiting for) the write lock.
    with Session(bind=session.get_bind().execution_options(sqlite_immediate=False)) as reader:
        yield reader


def _valid_email(email: str) -> str:
    try:
        return validate_email(
            email, check_deliverability=False, globally_deliverable=False
        ).normalized.lower()
    except EmailNotValidError as exc:
        raise InvalidInput({"email": [str(exc)]}) from exc


@cache
def available_time_zones() -> frozenset[str]:
    """The IANA zone names this machine knows (tzdata), read once."""
    return frozenset(zoneinfo.available_timezones())


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _sign_in_keys(email: str, client_ip: str | None) -> tuple[str, str]:
    """The throttling keys of an attempt: this account from this network, and the network."""
    network = ip_prefix(client_ip)
    return f"account:{email} net:{network}", f"ip:{network}"


def _retry_after(
    reader: Session, account_key: str, network_key: str, now: datetime
) -> timedelta | None:
    """How long an attempt must still wait, or None if it may try now."""
    waits = []
    failures = repository.failure_times(reader, account_key, now - ACCOUNT_NETWORK_BACKOFF.memory)
    if failures:
        ready = as_utc(failures[-1]) + ACCOUNT_NETWORK_BACKOFF.wait_after(len(failures))
        waits.append(ready - now)
    failures = repository.failure_times(reader, network_key, now - NETWORK_LIMIT.window)
    if len(failures) >= NETWORK_LIMIT.failures:
        # The cap lifts when enough failures have left the window for fewer than
        # `failures` to remain in it.
        ready = as_utc(failures[len(failures) - NETWORK_LIMIT.failures]) + NETWORK_LIMIT.window
        waits.append(ready - now)
    longest = max(waits, default=timedelta(0))
    return longest if longest > timedelta(0) else None


class AccountService:
    # -- users ---------------------------------------------------------------

    def create_user(
        self,
        session: Session,
        data: NewUser,
        *,
        admin: bool = False,
        password_hash: str | None = None,
        organisation: Organisation | None = None,
    ) -> User:
        """Add a user, in ``organisation``, else the named one (made if new), else the
        first one there is.

        The first user of an organisation is its admin; ``admin`` makes another one too.
        ``password_hash`` is ``data.password`` hashed beforehand (see ``hash_new_password``).
        """
        email = _valid_email(data.email)
        if repository.get_user_by_email(session, email) is not None:
            raise InvalidInput({"email": [f"There is already a user with the email {email}."]})
        org = organisation or (
            repository.get_organisation_by_name(session, data.organisation)
            if data.organisation
            else repository.get_first_organisation(session)
        )
        if org is None:
            org = Organisation(name=data.organisation or DEFAULT_ORGANISATION)
            session.add(org)
            session.flush()
        first = not repository.has_members(session, org.id)
        user = User(
            organisation_id=org.id,
            email=email,
            role=UserRole.ADMIN if admin or first else UserRole.MEMBER,
            display_name=data.name,
            password_hash=password_hash or hash_password(data.password),
            is_active=True,
            open_tracking_enabled=True,
            link_tracking_enabled=True,
            notify_tracking=True,
            last_open_tracking=True,
            last_link_tracking=True,
        )
        session.add(user)
        session.flush()
        return user

    def hash_new_password(self, data: NewUser) -> str:
        """The checked password's hash, made before a unit of work takes the write lock."""
        return hash_password(data.password)

    def create_first_user(self, session: Session, data: NewUser, password_hash: str) -> User:
        """Create the server's first user, the admin of a new organisation, while no user
        exists (the first-run page); raises FirstUserExists once one does.

        Racing requests create at most one: on PostgreSQL an advisory lock queues them
        before the check; on SQLite the caller's unit of work holds the write lock from
        its start (``unit_of_work(immediate=True)``), which serialises them the same way.
        """
        if session.get_bind().dialect.name == "postgresql":
            repository.lock_attempt_keys(session, [_lock_id("first-user")])
        if repository.count_users(session) > 0:
            raise FirstUserExists("An account exists already: sign in.")
        return self.create_user(session, data, admin=True, password_hash=password_hash)

    # -- invitations ---------------------------------------------------------

    def create_invitation(
        self, session: Session, admin: User, email: str, now: datetime | None = None
    ) -> tuple[Invitation, str]:
        """Invite a colleague to the admin's organisation; the link's token is returned
        once, only its hash is kept."""
        if not admin.is_admin:
            raise Forbidden("Only an admin of the organisation can invite colleagues.")
        address = _valid_email(email)
        if repository.get_user_by_email(session, address) is not None:
            raise InvalidInput({"email": [f"There is already a user with the email {address}."]})
        now = now or utcnow()
        token = new_secret()
        invitation = Invitation(
            organisation_id=admin.organisation_id,
            invited_by_id=admin.id,
            email=address,
            token_hash=hash_token(token),
            created_at=now,
            expires_at=now + INVITATION_LIFETIME,
        )
        session.add(invitation)
        session.flush()
        return invitation, token

    def pending_invitations(
        self, session: Session, admin: User, now: datetime | None = None
    ) -> Sequence[Invitation]:
        """The admin's organisation's invitations not used and not expired, newest first."""
        return repository.pending_invitations(session, admin.organisation_id, now or utcnow())

    def revoke_invitation(self, session: Session, admin: User, invitation_id: int) -> None:
        """Withdraw an unused invitation of the admin's organisation."""
        if not admin.is_admin:
            raise Forbidden("Only an admin of the organisation can withdraw invitations.")
        repository.delete_invitation(session, admin.organisation_id, invitation_id)

    def invitation_for(
        self, session: Session, token: str, now: datetime | None = None
    ) -> Invitation:
        """The invitation a link's token opens; InvitationInvalid if it is unknown, used
        or expired (which of them is not said)."""
        found = repository.get_invitation(session, hash_token(token)) if len(token) <= 200 else None
        if (
            found is None
            or found.used_at is not None
            or as_utc(found.expires_at) <= (now or utcnow())
        ):
            raise InvitationInvalid()
        return found

    def accept_invitation(
        self,
        session: Session,
        token: str,
        data: NewUser,
        password_hash: str,
        now: datetime | None = None,
    ) -> User:
        """Join the inviting organisation as a member, with the invited email.

        The claim is one conditional UPDATE (unused and unexpired), so two requests
        with the same link create at most one user.
        """
        now = now or utcnow()
        if len(token) > 200 or not repository.claim_invitation(session, hash_token(token), now):
            raise InvitationInvalid()
        invitation = repository.get_invitation(session, hash_token(token))
        assert invitation is not None
        org = repository.get_organisation(session, invitation.organisation_id)
        if org is None:
            raise InvitationInvalid()
        joined = data.model_copy(update={"email": invitation.email, "organisation": ""})
        return self.create_user(session, joined, password_hash=password_hash, organisation=org)

    # -- preferences -----------------------------------------------------------

    def save_time_zone(self, session: Session, user: User, zone: str) -> None:
        """The IANA zone the user's pages show times in."""
        zone = zone.strip()
        if zone not in available_time_zones():
            raise InvalidInput({"time_zone": ["Choose a time zone from the list."]})
        user.time_zone = zone

    def organisation_name(self, session: Session, user: User) -> str:
        org = repository.get_organisation(session, user.organisation_id)
        return org.name if org else ""

    def has_users(self, session: Session) -> bool:
        """Whether anyone can sign in yet (else the web app opens on its first account)."""
        return repository.any_user(session)

    # -- sign-in and sessions --------------------------------------------------

    def sign_in(
        self,
        session: Session,
        email: str,
        password: str,
        client_ip: str | None,
        now: datetime | None = None,
    ) -> SignedIn:
        """Check a password, unless this account was failed too often from this network
        lately, and open a session.

        Throttled per (account, network), never per account alone: failures from one
        network make the next try from there wait longer and longer
        (``ACCOUNT_NETWORK_BACKOFF``) and never lock the owner out elsewhere; one
        network failing many accounts hits ``NETWORK_LIMIT``. A throttled attempt
        raises TooManyAttempts (saying when to try again) without checking the
        password and without counting, so a trickle of guesses does not extend it.

        Failures are written to the session before SignInRefused is raised: the
        caller must commit it anyway, or the throttle would never count them.
        """
        now = now or utcnow()
        email = normalise_email(email)[:320]
        account_key, network_key = _sign_in_keys(email, client_ip)
        # Attempts on the same key wait for each other until the earlier one's
        # transaction ends: without that, parallel requests would all count the
        # same failures and all get their password checked.
        _attempt_gate.enter(session, [account_key, network_key])
        # Nothing is written before the password check: on SQLite the first write
        # takes the database's single write lock, which must not be held across
        # argon2 (the ingest writer would wait for it). The reads run outside the
        # session's transaction there, so that it starts with a write and cannot
        # fail to upgrade a stale read snapshot.
        with _pre_check_reader(session) as reader:
            wait = _retry_after(reader, account_key, network_key, now)
            if wait is not None:
                raise TooManyAttempts(wait)
            found = repository.get_user_by_email(reader, email)
            stored_hash = found.password_hash if found is not None and found.is_active else None
        # Unknown emails cost one hash verification too (against a dummy hash).
        verified = verify_password(stored_hash, password)
        repository.prune_attempts(
            session, [account_key, network_key], now - ACCOUNT_NETWORK_BACKOFF.memory
        )
        user = repository.get_user_by_email(session, email) if verified else None
        if user is None or not user.is_active or user.password_hash != stored_hash:
            repository.add_attempt(session, account_key, now, succeeded=False)
            repository.add_attempt(session, network_key, now, succeeded=False)
            raise SignInRefused()
        assert user is not None
        assert user.password_hash is not None
        if password_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        repository.forget_failures(session, account_key)
        return self.start_session(session, user, now)

    def start_session(self, session: Session, user: User, now: datetime | None = None) -> SignedIn:
        """Open a browser session for a user whose password was just checked or chosen."""
        now = now or utcnow()
        repository.delete_expired_sessions(session, user.id, now)
        token, csrf = new_secret(), new_secret()
        record = UserSession(
            token_hash=hash_token(token),
            user_id=user.id,
            csrf_secret=csrf,
            created_at=now,
            last_seen_at=now,
            expires_at=now + SESSION_LIFETIME,
        )
        session.add(record)
        session.flush()
        return SignedIn(
            user=user, session_token=token, csrf_secret=csrf, expires_at=record.expires_at
        )

    def session_user(
        self, session: Session, token: str | None, now: datetime | None = None
    ) -> tuple[User, UserSession] | None:
        """The user a session cookie belongs to, or None if it is unknown or expired.

        Reads only: an expired session is simply not found (``delete_expired_sessions``
        removes it at the next sign-in), and refreshing ``last_seen_at`` is
        :meth:`touch_session`'s job, so a page view never needs the write lock.
        """
        if not token or len(token) > 200:
            return None
        found = repository.get_session_with_user(session, hash_token(token))
        if found is None:
            return None
        record, user = found
        now = now or utcnow()
        if as_utc(record.expires_at) <= now or not user.is_active:
            return None
        return user, record

    def session_needs_touch(self, record: UserSession, now: datetime | None = None) -> bool:
        return (now or utcnow()) - as_utc(record.last_seen_at) > SESSION_TOUCH_INTERVAL

    def touch_session(self, session: Session, session_id: int, now: datetime | None = None) -> None:
        """Note that a browser session is in use (at most once per ``SESSION_TOUCH_INTERVAL``)."""
        repository.touch_session(session, session_id, now or utcnow())

    def sign_out(self, session: Session, token: str | None) -> None:
        """End a browser session; an unknown token is not an error."""
        if token and len(token) <= 200:
            repository.delete_session(session, hash_token(token))

    # -- API tokens ----------------------------------------------------------

    def create_api_token(
        self,
        session: Session,
        user: User,
        name: str,
        scopes: Iterable[str] = (TokenScope.READ, TokenScope.SEND),
        expires_in_days: int | None = None,
        now: datetime | None = None,
    ) -> tuple[ApiToken, str]:
        """Mint a token for the JSON API that may do what ``scopes`` allow, until it is
        revoked or ``expires_in_days`` have passed (None: no expiry).

        The plain value is returned once and never stored.
        """
        now = now or utcnow()
        errors: dict[str, list[str]] = {}
        name = name.strip()
        if not name:
            errors["name"] = ["Give the token a name, e.g. the script that uses it."]
        elif len(name) > 100:
            errors["name"] = ["Use at most 100 characters."]
        chosen: set[TokenScope] = set()
        for word in scopes:
            try:
                chosen.add(TokenScope(word.strip().lower()))
            except ValueError:
                errors["scopes"] = [
                    f"There is no scope {word.strip()!r}: choose from "
                    + ", ".join(s.value for s in TokenScope)
                    + "."
                ]
                break
        if not chosen and "scopes" not in errors:
            errors["scopes"] = ["Choose at least one thing the token may do."]
        if expires_in_days is not None and not 1 <= expires_in_days <= MAX_TOKEN_DAYS:
            errors["expires_in_days"] = [
                f"Choose between 1 and {MAX_TOKEN_DAYS} days, or no expiry."
            ]
        if errors:
            raise InvalidInput(errors)
        plain = new_api_token()
        token = ApiToken(
            user_id=user.id,
            name=name,
            token_hash=hash_token(plain),
            prefix=plain[:11],
            created_at=now,
            scopes=TokenScope.to_text(chosen),
            expires_at=None if expires_in_days is None else now + timedelta(days=expires_in_days),
        )
        session.add(token)
        session.flush()
        return token, plain

    def api_token_user(
        self, session: Session, plain: str, now: datetime | None = None
    ) -> tuple[User, ApiToken] | None:
        """The user an API token belongs to with the token, or None if it is unknown,
        revoked or expired. Reads only, like :meth:`session_user`."""
        if not plain or len(plain) > 200:
            return None
        found = repository.get_api_token_with_user(session, hash_token(plain))
        if found is None:
            return None
        token, user = found
        if not user.is_active:
            return None
        if token.expires_at is not None and as_utc(token.expires_at) <= (now or utcnow()):
            return None
        return user, token

    def token_needs_touch(self, token: ApiToken, now: datetime | None = None) -> bool:
        now = now or utcnow()
        return (
            token.last_used_at is None or now - as_utc(token.last_used_at) > SESSION_TOUCH_INTERVAL
        )

    def touch_api_token(self, session: Session, token_id: int, now: datetime | None = None) -> None:
        """Note that an API token is in use (at most once per ``SESSION_TOUCH_INTERVAL``)."""
        repository.touch_api_token(session, token_id, now or utcnow())

    def list_api_tokens(self, session: Session, user: User) -> Sequence[ApiToken]:
        return repository.list_api_tokens(session, user.id)

    def revoke_api_token(self, session: Session, user: User, token_id: int) -> None:
        """Revoke one of the user's own tokens; someone else's is "not found"."""
        token = repository.get_api_token(session, user.id, token_id)
        if token is None or token.revoked_at is not None:
            raise ApiTokenNotFound()
        token.revoked_at = utcnow()

    # -- mailbox connection ----------------------------------------------------

    def get_mailbox(self, session: Session, user: User) -> MailboxConnection | None:
        return repository.get_mailbox(session, user.id)

    def parse_mailbox_settings(
        self, values: dict[str, str], policy: AddressPolicy
    ) -> MailboxSettings:
        """Validate the Email sync form; raise InvalidInput with a message per field.

        The SMTP host is held to ``policy`` as a connection to it would be: an
        address typed in, or every address a name resolves to now. A name that
        does not resolve is accepted (DNS may be down); the connection test says so.
        """
        try:
            data = MailboxSettings.model_validate(values)
        except ValidationError as exc:
            raise InvalidInput(field_errors(exc)) from exc
        errors: dict[str, list[str]] = {}
        try:
            vet_host(data.smtp_host, data.smtp_port, policy)
        except AddressRefused as exc:
            errors["smtp_host"] = [exc.message]
        except HostNotFound:
            pass
        if data.smtp_security == Security.NONE and not is_loopback_host(data.smtp_host):
            errors["smtp_security"] = [
                "Without TLS the password would cross the network in clear text; "
                "choose implicit TLS or STARTTLS (no encryption is allowed for this "
                "machine's own loopback address only)."
            ]
        try:
            parse_address(data.sender_address)
        except ValueError as exc:
            errors["sender_address"] = [f"This is not a valid address ({exc})."]
        if data.imap_host:
            errors.update(_imap_problems(data, policy))
        if errors:
            raise InvalidInput(errors)
        return data

    def save_mailbox(
        self, session: Session, user: User, data: MailboxSettings, box: CredentialBox
    ) -> MailboxSaved:
        """Store the user's SMTP settings; the password only ever sealed.

        A stored password is kept only for the server it was entered for: when
        the host, port, security or user name change and no new password comes
        with them, it is dropped (``password_dropped``). Otherwise anyone holding
        a session could point the connection at their own server and receive
        the password in AUTH with "Test connection".
        """
        mailbox = repository.get_mailbox(session, user.id)
        password_dropped = False
        if mailbox is None:
            mailbox = MailboxConnection(user_id=user.id)
            session.add(mailbox)
        elif mailbox.is_demo:
            # Leaving the demo mailbox: its (empty) credentials mean nothing here.
            mailbox.smtp_password_encrypted = ""
        elif (
            not data.smtp_password
            and mailbox.smtp_password_encrypted
            and _smtp_server_changed(mailbox, data)
        ):
            mailbox.smtp_password_encrypted = ""
            password_dropped = True
        mailbox.is_demo = False
        mailbox.sender_name = data.sender_name
        mailbox.sender_address = data.sender_address
        mailbox.smtp_host = data.smtp_host
        mailbox.smtp_port = data.smtp_port
        mailbox.smtp_security = data.smtp_security
        mailbox.smtp_username = data.smtp_username
        if data.smtp_password:
            mailbox.smtp_password_encrypted = box.seal(data.smtp_password)
        imap_dropped = _save_imap(mailbox, data, box)
        mailbox.last_test_at = None
        mailbox.last_test_result = ""
        session.flush()
        return MailboxSaved(
            mailbox=mailbox, password_dropped=password_dropped, imap_password_dropped=imap_dropped
        )

    def use_demo_mailbox(self, session: Session, user: User, port: int) -> MailboxConnection:
        """Send through the built-in demo mailbox (loopback SMTP into the Demo inbox),
        creating the connection if the user has none.

        A real mailbox the user connected is never replaced: it is returned unchanged.
        """
        mailbox = repository.get_mailbox(session, user.id)
        if mailbox is None:
            mailbox = MailboxConnection(
                user_id=user.id,
                is_demo=True,
                sender_name=user.display_name,
                sender_address=user.email,
                smtp_host=DEMO_SMTP_HOST,
                smtp_port=port,
                smtp_security=Security.NONE,
            )
            session.add(mailbox)
            session.flush()
        elif mailbox.is_demo and mailbox.smtp_port != port:
            mailbox.smtp_port = port
            session.flush()
        return mailbox

    def smtp_params(self, session: Session, user: User, box: CredentialBox) -> SmtpParams:
        mailbox = repository.get_mailbox(session, user.id)
        if mailbox is None:
            raise NoMailboxConnection(
                "Connect a mailbox first, in Settings > Email sync (or use the demo mailbox)."
            )
        return SmtpParams(
            host=mailbox.smtp_host,
            port=mailbox.smtp_port,
            security=Security(mailbox.smtp_security),
            username=mailbox.smtp_username,
            password=box.open(mailbox.smtp_password_encrypted),
            demo=mailbox.is_demo,
        )

    async def test_connection(self, params: SmtpParams, probe: SmtpProbe) -> ConnectionReport:
        """Connect, secure and sign in as the worker would, and say which step failed."""
        result = await probe(params)
        headline = {
            "connect": "Cannot connect.",
            "tls": "TLS failure.",
            "auth": "Authentication refused.",
            "ok": "Connection works.",
        }.get(result.stage, "The test failed.")
        if not result.ok and result.stage == "ok":
            headline = "The test failed."
        return ConnectionReport(
            ok=result.ok, stage=result.stage, headline=headline, detail=result.message
        )

    def record_test(self, session: Session, user: User, report: ConnectionReport) -> None:
        mailbox = repository.get_mailbox(session, user.id)
        if mailbox is not None:
            mailbox.last_test_at = utcnow()
            mailbox.last_test_result = report.summary[:500]

    # -- mailbox sync (IMAP) ---------------------------------------------------

    def imap_params(self, session: Session, user: User, box: CredentialBox) -> ImapParams | None:
        """How to sign in to the user's IMAP server; None when no IMAP is set up."""
        mailbox = repository.get_mailbox(session, user.id)
        if mailbox is None or mailbox.is_demo or not mailbox.imap_host:
            return None
        sealed = (
            mailbox.smtp_password_encrypted
            if mailbox.imap_same_password
            else mailbox.imap_password_encrypted
        )
        return ImapParams(
            host=mailbox.imap_host,
            port=mailbox.imap_port,
            security=Security(mailbox.imap_security),
            username=mailbox.imap_username or mailbox.smtp_username or mailbox.sender_address,
            password=box.open(sealed),
        )

    async def test_imap(self, params: ImapParams, probe: ImapProbe) -> ImapReport:
        """Sign in, list the folders and find Sent, and say which step failed."""
        result = await probe(params)
        if result.ok:
            found = (
                f"The Sent folder is “{result.sent_folder}”."
                if result.sent_folder
                else "No Sent folder was found: choose the folder for sent email below."
            )
            return ImapReport(
                True, "IMAP works.", f"{result.message} {found}", result.folders, result.sent_folder
            )
        headline = {
            "connect": "IMAP: cannot connect.",
            "tls": "IMAP: TLS failure.",
            "auth": "IMAP: sign-in refused.",
        }.get(result.stage, "IMAP: the test failed.")
        return ImapReport(False, headline, result.message, (), "")

    def record_imap_test(self, session: Session, user: User, report: ImapReport) -> None:
        """Keep the Sent folder the test found, unless the user chose one."""
        mailbox = repository.get_mailbox(session, user.id)
        if mailbox is not None and report.ok and report.sent_folder and not mailbox.sent_folder:
            mailbox.sent_folder = report.sent_folder[:255]

    def sync_status(self, session: Session, mailbox: MailboxConnection | None) -> SyncStatus | None:
        """Where the sync of the mailbox stands; None before its first attempt."""
        if mailbox is None or not mailbox.imap_host:
            return None
        state = repository.sync_state(session, mailbox.id)
        if state is None:
            return None
        return SyncStatus(
            last_success_at=state.last_success_at,
            last_error=state.last_error,
            last_error_at=state.last_error_at,
            next_attempt_at=state.next_attempt_at,
            first_sync_done=state.first_sync_done,
            stored_count=state.stored_count,
        )

    # -- tracking options ------------------------------------------------------

    def save_tracking_options(self, session: Session, user: User, data: TrackingOptions) -> None:
        """What the user allows at all; compose stops offering an option switched off."""
        user.open_tracking_enabled = data.open_tracking_enabled
        user.link_tracking_enabled = data.link_tracking_enabled
        user.notify_tracking = data.notify_tracking


def _imap_problems(data: MailboxSettings, policy: AddressPolicy) -> dict[str, list[str]]:
    """The IMAP settings held to the same rules as SMTP's."""
    errors: dict[str, list[str]] = {}
    try:
        vet_host(data.imap_host, data.imap_port, policy)
    except AddressRefused as exc:
        errors["imap_host"] = [exc.message]
    except HostNotFound:
        pass
    if data.imap_security == Security.NONE and not is_loopback_host(data.imap_host):
        errors["imap_security"] = [
            "Without TLS the password would cross the network in clear text; choose "
            "implicit TLS or STARTTLS (no encryption is allowed for this machine's own "
            "loopback address only)."
        ]
    return errors


def _save_imap(mailbox: MailboxConnection, data: MailboxSettings, box: CredentialBox) -> bool:
    """Store the IMAP settings; True if a password had to be dropped.

    As for SMTP, no stored password ever goes to a server it was not entered
    for: when the IMAP server or user name change, "same as SMTP" stands only if
    the SMTP password comes with these settings, and a separate IMAP password
    only if a new one does. Otherwise the password is dropped and asked for.
    """
    if not data.imap_host:
        mailbox.imap_host = ""
        return False
    new_server = not mailbox.imap_host or _imap_server_changed(mailbox, data)
    dropped = False
    if data.imap_same_password:
        if new_server and not data.smtp_password and mailbox.smtp_password_encrypted:
            # The stored SMTP password would travel to a server it was not typed for.
            mailbox.imap_same_password = False
            mailbox.imap_password_encrypted = ""
            dropped = True
        else:
            mailbox.imap_same_password = True
            mailbox.imap_password_encrypted = ""
    else:
        mailbox.imap_same_password = False
        if data.imap_password:
            mailbox.imap_password_encrypted = box.seal(data.imap_password)
        elif new_server and mailbox.imap_password_encrypted:
            mailbox.imap_password_encrypted = ""
            dropped = True
    mailbox.imap_host = data.imap_host
    mailbox.imap_port = data.imap_port
    mailbox.imap_security = data.imap_security
    mailbox.imap_username = data.imap_username
    mailbox.sent_folder = data.sent_folder
    mailbox.replace_provider_copies = data.replace_provider_copies
    return dropped


account_service = AccountService()
