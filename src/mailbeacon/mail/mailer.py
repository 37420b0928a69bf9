"""Talking SMTP: the ``Mailer`` interface and its aiosmtplib implementation.

Every failure is sorted by what it means for the copy:

- ``temporary``: the server answered 4xx, or the connection could not be made
  or was lost before the message was handed over; retrying is safe.
- ``permanent``: the server answered 5xx (RFC 5321 section 4.2.1), or the
  settings cannot work (no encryption to a remote host); retrying is pointless.
- ``unknown``: the connection was lost or timed out while the message itself
  was being transferred, after DATA. The server may have accepted it and
  failed to say so (the duplicate-message problem of RFC 1047), so the copy is
  never resent without the user's say.

What the user reads about a failed session is a fixed sentence written here,
with the SMTP reply code where there is one, never the server's own words: a
host that is not a mail server (an SSH daemon, say) would otherwise have its
banner repeated, and "Test connection" would tell apart refused, silent and
non-TLS ports anywhere it can reach. Where it may connect at all is decided by
``kit.netpolicy`` before any packet leaves: the host name is resolved once and
the connection goes to the vetted address, with the name kept for TLS.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import ssl
from collections.abc import Awaitable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, Protocol

import aiosmtplib

from mailbeacon.kit.netpolicy import (
    AddressPolicy,
    AddressRefused,
    HostNotFound,
    Rule,
    Unreachable,
    VettedHost,
    classify,
    connect_vetted_async,
    vet_host_async,
)
from mailbeacon.kit.tls_errors import not_a_mail_server, ssl_cause, tls_failure_reason
from mailbeacon.models.mailbox import Security

log = logging.getLogger(__name__)

Stage = Literal["connect", "tls", "auth", "ok"]


class Outcome(StrEnum):
    SENT = "sent"
    TEMPORARY = "temporary"
    PERMANENT = "permanent"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class Delivery:
    """What became of one SMTP transaction, with the server's reply or our explanation."""

    outcome: Outcome
    reply: str


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    host: str
    port: int
    security: Security
    username: str = ""
    password: str = ""
    timeout: float = 60.0
    # Where the host may be; the strictest policy unless the caller says otherwise.
    policy: AddressPolicy = field(default_factory=AddressPolicy)
    # None verifies the certificate and host name against the system's trust store;
    # tests pass a context that trusts their own certificate.
    tls_context: ssl.SSLContext | None = None


@dataclass
class ConnectionTestResult:
    ok: bool
    stage: str  # "connect" | "tls" | "auth" | "ok"
    message: str


class Mailer(Protocol):
    """Sends one message to one envelope recipient per call, over a kept-open connection."""

    #: True while the message octets may be on their way (after DATA, before the reply).
    in_data_phase: bool

    async def send(
        self, sender: str, recipient: str, data: bytes, gate: Awaitable[bool] | None = None
    ) -> Delivery | None:
        """One transaction. With a ``gate``, DATA waits for it: False (the copy did not
        start) resets the transaction and returns None, nothing handed over."""
        ...

    async def close(self) -> None: ...

    def abort(self) -> None: ...


class SmtpStageError(Exception):
    """Opening a session failed at one stage; the message says what to do about it."""

    def __init__(self, stage: Stage, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.stage: Stage = stage
        self.message = message
        self.temporary = temporary


def _local_hostname() -> str:
    # EHLO wants our name (RFC 5321 section 4.1.1.1). socket.getfqdn(), aiosmtplib's
    # default, may block on a DNS lookup; the plain host name needs none.
    name = socket.gethostname()
    return name if name and name.isascii() and " " not in name else "localhost"


def _reply(exc: aiosmtplib.SMTPResponseException) -> str:
    return f"{exc.code} {exc.message}".strip()


def _code(exc: aiosmtplib.SMTPResponseException) -> str:
    """The reply code as " (reply 535)" if well-formed (RFC 5321 section 4.2), else nothing."""
    return f" (reply {exc.code})" if 200 <= exc.code <= 599 else ""


_PLAIN_REMOTE = (
    "sending without encryption is only allowed to this machine (127.0.0.1 or "
    "localhost); choose TLS or STARTTLS"
)


def _no_smtp_answer(where: str, settings: SmtpSettings) -> str:
    return not_a_mail_server(
        where, implicit_tls=settings.security == Security.TLS, usual_tls_port=465
    )


def _failed_in_handshake(exc: BaseException) -> bool:
    """With implicit TLS, whether the session failed before the greeting could be read.

    aiosmtplib raises SMTPConnectError (or its timeout) from the OSError or
    TimeoutError of the handshake, and from its own SMTPException when reading
    the greeting failed.
    """
    if ssl_cause(exc) is not None:
        return True
    return (
        isinstance(exc, aiosmtplib.SMTPConnectError)
        and not isinstance(exc, aiosmtplib.SMTPResponseException)
        and not isinstance(exc.__cause__, aiosmtplib.SMTPException)
    )


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificate and host name checked against the system's trust store."""
    return ssl.create_default_context()


async def _connect(settings: SmtpSettings, where: str) -> tuple[VettedHost, socket.socket]:
    """Vet the host under the policy and open TCP to a vetted address (never the name)."""
    try:
        vetted = await vet_host_async(settings.host, settings.port, settings.policy)
    except AddressRefused as exc:
        raise SmtpStageError("connect", exc.message, temporary=False) from exc
    except HostNotFound as exc:
        raise SmtpStageError(
            "connect", f"The host name {settings.host} cannot be found.", temporary=True
        ) from exc
    # Judged by the addresses, not the name: "localhost" could be made to point anywhere.
    if settings.security == Security.NONE and any(
        classify(address) != Rule.LOOPBACK for address in vetted.addresses
    ):
        raise SmtpStageError("tls", _PLAIN_REMOTE, temporary=False)
    try:
        sock = await connect_vetted_async(vetted, settings.port, settings.timeout)
    except Unreachable as exc:
        # Refused and unanswered read alike: the difference is a port scanner's answer.
        raise SmtpStageError(
            "connect",
            f"Could not connect to {where}: nothing answered, or the connection was refused.",
            temporary=True,
        ) from exc
    return vetted, sock


def _session_refused(exc: BaseException, settings: SmtpSettings, where: str) -> SmtpStageError:
    """What a failure between TCP and a usable greeting means, in fixed words."""
    if isinstance(exc, aiosmtplib.SMTPConnectResponseError) and _code(exc):
        return SmtpStageError(
            "connect", f"{where} refused the session{_code(exc)}.", temporary=exc.code < 500
        )
    if settings.security == Security.TLS and _failed_in_handshake(exc):
        return SmtpStageError("tls", f"{where}: {tls_failure_reason(exc)}.", temporary=False)
    return SmtpStageError(
        "connect",
        _no_smtp_answer(where, settings),
        temporary=True,
    )


async def open_smtp(settings: SmtpSettings) -> aiosmtplib.SMTP:
    """Connect, secure and sign in, raising :class:`SmtpStageError` with the failing stage."""
    where = f"{settings.host}:{settings.port}"
    vetted, sock = await _connect(settings, where)
    tls = None if settings.security == Security.NONE else settings.tls_context or _tls_context()
    # The socket is connected to the vetted address; aiosmtplib only speaks over it,
    # and checks the certificate against the host name (implicit TLS and STARTTLS).
    smtp = aiosmtplib.SMTP(
        hostname=vetted.name,
        sock=sock,
        use_tls=settings.security == Security.TLS,
        start_tls=False,
        timeout=settings.timeout,
        local_hostname=_local_hostname(),
        tls_context=tls,
    )
    try:
        await smtp.connect()
    except (aiosmtplib.SMTPException, OSError) as exc:
        sock.close()
        raise _session_refused(exc, settings, where) from exc
    except BaseException:
        sock.close()
        raise
    try:
        if settings.security == Security.STARTTLS:
            await _starttls(smtp, settings, where)
        if settings.username:
            await _login(smtp, settings, where)
        if smtp.is_ehlo_or_helo_needed:
            await _ehlo(smtp, settings, where)
    except BaseException:
        smtp.close()
        raise
    return smtp


async def _ehlo(smtp: aiosmtplib.SMTP, settings: SmtpSettings, where: str) -> None:
    try:
        await smtp.ehlo()
    except aiosmtplib.SMTPResponseException as exc:
        if not _code(exc):
            raise SmtpStageError(
                "connect",
                _no_smtp_answer(where, settings),
                temporary=True,
            ) from exc
        raise SmtpStageError(
            "connect", f"{where} did not accept EHLO{_code(exc)}.", temporary=True
        ) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpStageError(
            "connect",
            _no_smtp_answer(where, settings),
            temporary=True,
        ) from exc


async def _starttls(smtp: aiosmtplib.SMTP, settings: SmtpSettings, where: str) -> None:
    await _ehlo(smtp, settings, where)
    if not smtp.supports_extension("starttls"):
        raise SmtpStageError(
            "tls",
            f"{where} does not offer STARTTLS; try implicit TLS (usually port 465).",
            temporary=False,
        )
    try:
        await smtp.starttls()
    except aiosmtplib.SMTPResponseException as exc:
        raise SmtpStageError(
            "tls", f"{where} refused STARTTLS{_code(exc)}.", temporary=exc.code < 500
        ) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpStageError(
            "tls", f"{where}: {tls_failure_reason(exc, after_starttls=True)}.", temporary=False
        ) from exc


async def _login(smtp: aiosmtplib.SMTP, settings: SmtpSettings, where: str) -> None:
    try:
        await smtp.login(settings.username, settings.password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise SmtpStageError(
            "auth",
            f"{where} refused the user name or password{_code(exc)}.",
            temporary=400 <= exc.code < 500,
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise SmtpStageError(
            "auth", f"{where} refused to sign in{_code(exc)}.", temporary=exc.code < 500
        ) from exc
    except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
        raise SmtpStageError(
            "auth",
            f"{where} closed the connection or stopped answering while signing in.",
            temporary=True,
        ) from exc
    except aiosmtplib.SMTPException as exc:
        # "AUTH not supported" and "no suitable method" come as plain SMTPException.
        raise SmtpStageError(
            "auth",
            f"{where} offers no way of signing in that mailbeacon supports on this "
            "connection (SMTP AUTH with PLAIN, LOGIN or CRAM-MD5).",
            temporary=False,
        ) from exc


async def test_smtp_connection(
    host: str,
    port: int,
    security: Security,
    username: str,
    password: str,
    *,
    policy: AddressPolicy,
    timeout: float = 10,  # noqa: ASYNC109, PT028 (the API others call; not a pytest test)
) -> ConnectionTestResult:
    """Try the settings once and say which stage failed (connect, TLS, sign-in), in fixed words."""
    where = f"{host}:{port}"
    settings = SmtpSettings(
        host, port, security, username, password, timeout=timeout, policy=policy
    )
    try:
        smtp = await open_smtp(settings)
    except SmtpStageError as exc:
        return ConnectionTestResult(False, exc.stage, exc.message)
    with contextlib.suppress(aiosmtplib.SMTPException, OSError):
        await smtp.quit()
    smtp.close()
    secured = {
        Security.TLS: "over TLS",
        Security.STARTTLS: "with STARTTLS",
        Security.NONE: "without encryption (this machine only)",
    }[security]
    signed_in = f", signed in as {username}" if username else ""
    return ConnectionTestResult(True, "ok", f"Connected to {where} {secured}{signed_in}.")


# Keep pytest from collecting the public helper above as a test when it is imported.
test_smtp_connection.__test__ = False  # type: ignore[attr-defined]


class SmtpMailer:
    """One SMTP session, opened on first use and kept for the transactions that follow."""

    def __init__(self, settings: SmtpSettings) -> None:
        self.settings = settings
        self._smtp: aiosmtplib.SMTP | None = None
        self.in_data_phase = False

    @property
    def connected(self) -> bool:
        return self._smtp is not None and self._smtp.is_connected

    async def send(
        self, sender: str, recipient: str, data: bytes, gate: Awaitable[bool] | None = None
    ) -> Delivery | None:
        """One transaction: MAIL FROM the sender, RCPT TO this one recipient, DATA.

        With a ``gate``, the session is opened and MAIL and RCPT are said while the
        outbox worker commits the copy's start; DATA, the only command that can hand
        anything over, waits for the gate to say the start committed. False resets
        the transaction and returns None.
        """
        reused = self.connected
        while True:
            try:
                return await self._transaction(sender, recipient, data, gate)
            except _StaleConnection as exc:
                # A kept-open connection the server had already closed: nothing was
                # handed over, so open a fresh one and try once more at once.
                if not reused:
                    return Delivery(Outcome.TEMPORARY, str(exc))
                reused = False

    async def _transaction(
        self, sender: str, recipient: str, data: bytes, gate: Awaitable[bool] | None
    ) -> Delivery | None:
        self.in_data_phase = False
        if not self.connected:
            try:
                self._smtp = await open_smtp(self.settings)
            except SmtpStageError as exc:
                return Delivery(
                    Outcome.TEMPORARY if exc.temporary else Outcome.PERMANENT, exc.message
                )
        smtp = self._smtp
        assert smtp is not None
        try:
            envelope_from, envelope_to = _path(sender), _path(recipient)
        except UnicodeEncodeError:
            return Delivery(Outcome.PERMANENT, "the envelope addresses must be ASCII")
        try:
            # MAIL and RCPT are written out rather than sent through smtp.mail() and
            # smtp.rcpt(), which parse each address again on every transaction; ours
            # were validated when the send was planned.
            options = [b"SIZE=%d" % len(data)] if smtp.supports_extension("size") else []
            reply = await smtp.execute_command(b"MAIL", b"FROM:" + envelope_from, *options)
            if reply.code != 250:
                raise aiosmtplib.SMTPSenderRefused(reply.code, reply.message, sender)
            reply = await smtp.execute_command(b"RCPT", b"TO:" + envelope_to)
            if reply.code not in (250, 251):
                raise aiosmtplib.SMTPRecipientRefused(reply.code, reply.message, recipient)
            if gate is not None and not await gate:
                await self._reset()
                return None
            self.in_data_phase = True
            response = await smtp.data(data)
        except aiosmtplib.SMTPResponseException as exc:
            # A reply, even one refusing the message after DATA, is a definite answer.
            self.in_data_phase = False
            await self._reset()
            outcome = Outcome.TEMPORARY if exc.code < 500 else Outcome.PERMANENT
            return Delivery(outcome, _reply(exc))
        except (aiosmtplib.SMTPServerDisconnected, aiosmtplib.SMTPTimeoutError, OSError) as exc:
            self._drop()
            if self.in_data_phase:
                self.in_data_phase = False
                return Delivery(
                    Outcome.UNKNOWN,
                    "the connection was lost while the message was being handed over "
                    f"({exc}); the server may or may not have accepted it",
                )
            raise _StaleConnection(f"connection to {self.settings.host} lost: {exc}") from exc
        # Left set if the task is cancelled mid-transfer, so the caller can tell.
        self.in_data_phase = False
        return Delivery(Outcome.SENT, f"{response.code} {response.message}".strip())

    async def _reset(self) -> None:
        """Abandon the open transaction so the session can carry the next one."""
        if self._smtp is None or not self._smtp.is_connected:
            return
        try:
            await self._smtp.rset()
        except (aiosmtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        if self._smtp is not None:
            self._smtp.close()
        self._smtp = None

    def abort(self) -> None:
        """Drop the connection at once, without QUIT (the session may be mid-transaction)."""
        self._drop()

    async def close(self) -> None:
        """Say QUIT (briefly) and close."""
        smtp, self._smtp = self._smtp, None
        if smtp is None:
            return
        if smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=5)
        smtp.close()


class _StaleConnection(Exception):
    pass


def _path(address: str) -> bytes:
    """An envelope path, RFC 5321 section 4.1.2 (the address is already validated)."""
    return b"<" + address.encode("ascii") + b">"
