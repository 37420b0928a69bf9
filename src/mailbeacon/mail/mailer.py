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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal, Protocol

import aiosmtplib

from mailbeacon.kit.net import is_loopback_host
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


@dataclass
class ConnectionTestResult:
    ok: bool
    stage: str  # "connect" | "tls" | "auth" | "ok"
    message: str


class Mailer(Protocol):
    """Sends one message to one envelope recipient per call, over a kept-open connection."""

    #: True while the message octets may be on their way (after DATA, before the reply).
    in_data_phase: bool

    async def send(self, sender: str, recipient: str, data: bytes) -> Delivery: ...

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


def _describe_tls_error(exc: BaseException) -> str:
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, ssl.SSLError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"the server's certificate is not trusted ({cause.verify_message})"
    if cause is not None and "WRONG_VERSION_NUMBER" in str(cause):
        return "the server did not answer with TLS; this port may expect STARTTLS or no encryption"
    if isinstance(exc, TimeoutError | aiosmtplib.SMTPTimeoutError):
        return "the TLS handshake timed out; this port may expect STARTTLS or no encryption"
    return f"the TLS handshake failed ({cause or exc})"


def _has_ssl_cause(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
    return False


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """Certificate and host name checked against the system's trust store."""
    return ssl.create_default_context()


def _refuse_plain_remote(host: str, security: Security) -> None:
    if security == Security.NONE and not is_loopback_host(host):
        raise SmtpStageError(
            "tls",
            "sending without encryption is only allowed to this machine (127.0.0.1 or "
            "localhost); choose TLS or STARTTLS",
            temporary=False,
        )


async def open_smtp(settings: SmtpSettings) -> aiosmtplib.SMTP:
    """Connect, secure and sign in, raising :class:`SmtpStageError` with the failing stage."""
    where = f"{settings.host}:{settings.port}"
    _refuse_plain_remote(settings.host, settings.security)
    smtp = aiosmtplib.SMTP(
        hostname=settings.host,
        port=settings.port,
        use_tls=settings.security == Security.TLS,
        start_tls=False,
        timeout=settings.timeout,
        local_hostname=_local_hostname(),
        tls_context=_tls_context() if settings.security != Security.NONE else None,
    )
    try:
        await smtp.connect()
    except aiosmtplib.SMTPConnectResponseError as exc:
        raise SmtpStageError(
            "connect", f"{where} refused the session: {_reply(exc)}", temporary=exc.code < 500
        ) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        if settings.security == Security.TLS and _has_ssl_cause(exc):
            raise SmtpStageError(
                "tls", f"{where}: {_describe_tls_error(exc)}", temporary=False
            ) from exc
        raise SmtpStageError(
            "connect", f"cannot connect to {where}: {_connect_reason(exc)}", temporary=True
        ) from exc
    try:
        if settings.security == Security.STARTTLS:
            await _starttls(smtp, where)
        if settings.username:
            await _login(smtp, settings, where)
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()
    except aiosmtplib.SMTPException as exc:
        smtp.close()
        raise SmtpStageError(
            "connect", f"{where} did not accept EHLO: {exc}", temporary=True
        ) from exc
    except BaseException:
        smtp.close()
        raise
    return smtp


def _connect_reason(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPConnectTimeoutError | TimeoutError):
        return "no answer (timed out)"
    cause = exc.__cause__
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(cause, socket.gaierror):
        return "the host name cannot be resolved"
    return str(cause or exc)


async def _starttls(smtp: aiosmtplib.SMTP, where: str) -> None:
    try:
        await smtp.ehlo()
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpStageError(
            "connect", f"{where} did not accept EHLO: {exc}", temporary=True
        ) from exc
    if not smtp.supports_extension("starttls"):
        raise SmtpStageError(
            "tls",
            f"{where} does not offer STARTTLS; try implicit TLS (usually port 465)",
            temporary=False,
        )
    try:
        await smtp.starttls()
    except aiosmtplib.SMTPResponseException as exc:
        raise SmtpStageError(
            "tls", f"{where} refused STARTTLS: {_reply(exc)}", temporary=exc.code < 500
        ) from exc
    except (aiosmtplib.SMTPException, OSError) as exc:
        raise SmtpStageError(
            "tls", f"{where}: {_describe_tls_error(exc)}", temporary=False
        ) from exc


async def _login(smtp: aiosmtplib.SMTP, settings: SmtpSettings, where: str) -> None:
    try:
        await smtp.login(settings.username, settings.password)
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise SmtpStageError(
            "auth",
            f"{where} refused the user name or password: {_reply(exc)}",
            temporary=400 <= exc.code < 500,
        ) from exc
    except aiosmtplib.SMTPResponseException as exc:
        raise SmtpStageError(
            "auth", f"{where} refused to sign in: {_reply(exc)}", temporary=exc.code < 500
        ) from exc
    except aiosmtplib.SMTPServerDisconnected as exc:
        raise SmtpStageError(
            "auth", f"{where} closed the connection while signing in", temporary=True
        ) from exc
    except aiosmtplib.SMTPException as exc:
        # "AUTH not supported" and "no suitable method" come as plain SMTPException.
        raise SmtpStageError("auth", f"{where}: {exc}", temporary=False) from exc


async def test_smtp_connection(
    host: str,
    port: int,
    security: Security,
    username: str,
    password: str,
    *,
    timeout: float = 10,  # noqa: ASYNC109, PT028 (the API others call; not a pytest test)
) -> ConnectionTestResult:
    """Try the settings once and say which stage failed (connect, TLS, sign-in) and why."""
    where = f"{host}:{port}"
    try:
        _refuse_plain_remote(host, security)
    except SmtpStageError as exc:
        return ConnectionTestResult(False, exc.stage, exc.message)
    # A bare TCP connection first: with implicit TLS, a failing handshake and an
    # unreachable host would otherwise look alike.
    try:
        _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError) as exc:
        return ConnectionTestResult(
            False, "connect", f"cannot connect to {where}: {_connect_reason_raw(exc)}"
        )
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    settings = SmtpSettings(host, port, security, username, password, timeout)
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
    return ConnectionTestResult(True, "ok", f"connected to {where} {secured}{signed_in}")


def _connect_reason_raw(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer (timed out)"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens on that port)"
    if isinstance(exc, socket.gaierror):
        return "the host name cannot be resolved"
    return str(exc)


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

    async def send(self, sender: str, recipient: str, data: bytes) -> Delivery:
        """One transaction: MAIL FROM the sender, RCPT TO this one recipient, DATA."""
        reused = self.connected
        while True:
            try:
                return await self._transaction(sender, recipient, data)
            except _StaleConnection as exc:
                # A kept-open connection the server had already closed: nothing was
                # handed over, so open a fresh one and try once more at once.
                if not reused:
                    return Delivery(Outcome.TEMPORARY, str(exc))
                reused = False

    async def _transaction(self, sender: str, recipient: str, data: bytes) -> Delivery:
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
