"""Accounts rules: users, sign-in, sessions, API tokens and the mailbox connection."""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

from email_validator import EmailNotValidError, validate_email
from pydantic import ValidationError
from sqlalchemy import event
from sqlalchemy.orm import Session, SessionTransaction

from mailbeacon.accounts import repository
from mailbeacon.accounts.schemas import MailboxSettings, NewUser, TrackingOptions
from mailbeacon.accounts.security import (
    EMAIL_LIMIT,
    IP_LIMIT,
    SESSION_LIFETIME,
    SESSION_TOUCH_INTERVAL,
    RateLimit,
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
from mailbeacon.kit.errors import Conflict, DomainError, InvalidInput, NotFound
from mailbeacon.kit.net import is_loopback_host
from mailbeacon.kit.validation import field_errors
from mailbeacon.models import ApiToken, MailboxConnection, Organisation, Security, User, UserSession

DEFAULT_ORGANISATION = "My organisation"

__all__ = ["InvalidInput"]


class SignInRefused(DomainError):
    """Wrong email or password; deliberately does not say which."""

    def __init__(self, message: str = "Wrong email or password.") -> None:
        super().__init__(message)
        self.message = message


class TooManyAttempts(SignInRefused):
    def __init__(self, minutes: int) -> None:
        unit = "minute" if minutes == 1 else "minutes"
        super().__init__(f"Too many attempts, try again in {minutes} {unit}.")
        self.minutes = minutes


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


SERVER_CHANGED_NOTICE = (
    "Enter the password again: the server changed. The stored password was removed "
    "so that it is never sent to a server it was not entered for."
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
                raise TooManyAttempts(1)
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


def normalise_email(email: str) -> str:
    return email.strip().lower()


def _remaining_minutes(attempts: Sequence[datetime], limit: RateLimit, now: datetime) -> int:
    # The block lifts when enough failures have left the window for fewer than
    # `limit.failures` to remain in it.
    frees_at = as_utc(attempts[len(attempts) - limit.failures]) + limit.window
    return max(1, math.ceil((frees_at - now).total_seconds() / 60))


class AccountService:
    # -- users ---------------------------------------------------------------

    def create_user(self, session: Session, data: NewUser) -> User:
        """Add a user, in the named organisation (made if new) or the first one there is."""
        try:
            email = validate_email(
                data.email, check_deliverability=False, globally_deliverable=False
            ).normalized.lower()
        except EmailNotValidError as exc:
            raise InvalidInput({"email": [str(exc)]}) from exc
        if repository.get_user_by_email(session, email) is not None:
            raise InvalidInput({"email": [f"There is already a user with the email {email}."]})
        org = (
            repository.get_organisation_by_name(session, data.organisation)
            if data.organisation
            else repository.get_first_organisation(session)
        )
        if org is None:
            org = Organisation(name=data.organisation or DEFAULT_ORGANISATION)
            session.add(org)
            session.flush()
        user = User(
            organisation_id=org.id,
            email=email,
            display_name=data.name,
            password_hash=hash_password(data.password),
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

    def organisation_name(self, session: Session, user: User) -> str:
        org = repository.get_organisation(session, user.organisation_id)
        return org.name if org else ""

    def has_users(self, session: Session) -> bool:
        return repository.count_users(session) > 0

    # -- sign-in and sessions --------------------------------------------------

    def sign_in(
        self,
        session: Session,
        email: str,
        password: str,
        client_ip: str | None,
        now: datetime | None = None,
    ) -> SignedIn:
        """Check a password under the rate limits and open a session.

        Failures are written to the session before SignInRefused is raised: the
        caller must commit it anyway, or the limit would never count them.
        """
        now = now or utcnow()
        email = normalise_email(email)[:320]
        email_key, ip_key = f"email:{email}", f"ip:{ip_prefix(client_ip)}"
        # Attempts on the same key wait for each other until the earlier one's
        # transaction ends: without that, parallel requests would all count the
        # same failures and all get their password checked.
        _attempt_gate.enter(session, [email_key, ip_key])
        # Nothing is written before the password check: on SQLite the first write
        # takes the database's single write lock, which must not be held across
        # argon2 (the ingest writer would wait for it). The reads run outside the
        # session's transaction there, so that it starts with a write and cannot
        # fail to upgrade a stale read snapshot.
        with _pre_check_reader(session) as reader:
            for key, limit in ((email_key, EMAIL_LIMIT), (ip_key, IP_LIMIT)):
                attempts = repository.failure_times(reader, key, now - limit.window)
                if len(attempts) >= limit.failures:
                    # Refused without checking the password and without counting:
                    # otherwise a steady trickle would keep the owner locked out.
                    raise TooManyAttempts(_remaining_minutes(attempts, limit, now))
            found = repository.get_user_by_email(reader, email)
            stored_hash = found.password_hash if found is not None and found.is_active else None
        # Unknown emails cost one hash verification too (against a dummy hash).
        verified = verify_password(stored_hash, password)
        repository.prune_attempts(session, [email_key, ip_key], now - 4 * EMAIL_LIMIT.window)
        user = repository.get_user_by_email(session, email) if verified else None
        if user is None or not user.is_active or user.password_hash != stored_hash:
            repository.add_attempt(session, email_key, now, succeeded=False)
            repository.add_attempt(session, ip_key, now, succeeded=False)
            raise SignInRefused()
        assert user is not None
        assert user.password_hash is not None
        if password_needs_rehash(user.password_hash):
            user.password_hash = hash_password(password)
        repository.forget_failures(session, email_key)
        repository.add_attempt(session, email_key, now, succeeded=True)
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

    def create_api_token(self, session: Session, user: User, name: str) -> tuple[ApiToken, str]:
        """Mint a token for the JSON API; the plain value is returned once and never stored."""
        name = name.strip()
        if not name:
            raise InvalidInput({"name": ["Give the token a name, e.g. the script that uses it."]})
        if len(name) > 100:
            raise InvalidInput({"name": ["Use at most 100 characters."]})
        plain = new_api_token()
        token = ApiToken(
            user_id=user.id,
            name=name,
            token_hash=hash_token(plain),
            prefix=plain[:11],
            created_at=utcnow(),
        )
        session.add(token)
        session.flush()
        return token, plain

    def api_token_user(
        self, session: Session, plain: str, now: datetime | None = None
    ) -> tuple[User, ApiToken] | None:
        """The user an API token belongs to with the token, or None if it is unknown or
        revoked. Reads only, like :meth:`session_user`."""
        if not plain or len(plain) > 200:
            return None
        found = repository.get_api_token_with_user(session, hash_token(plain))
        if found is None:
            return None
        token, user = found
        if not user.is_active:
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

    def parse_mailbox_settings(self, values: dict[str, str]) -> MailboxSettings:
        """Validate the Email sync form; raise InvalidInput with a message per field."""
        try:
            data = MailboxSettings.model_validate(values)
        except ValidationError as exc:
            raise InvalidInput(field_errors(exc)) from exc
        errors: dict[str, list[str]] = {}
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
        mailbox.last_test_at = None
        mailbox.last_test_result = ""
        session.flush()
        return MailboxSaved(mailbox=mailbox, password_dropped=password_dropped)

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

    # -- tracking options ------------------------------------------------------

    def save_tracking_options(self, session: Session, user: User, data: TrackingOptions) -> None:
        """What the user allows at all; compose stops offering an option switched off."""
        user.open_tracking_enabled = data.open_tracking_enabled
        user.link_tracking_enabled = data.link_tracking_enabled
        user.notify_tracking = data.notify_tracking


account_service = AccountService()
