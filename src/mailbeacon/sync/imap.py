"""Talking IMAP: the ``MailboxClient`` interface and its IMAPClient implementation.

Every call blocks; callers run a client in a worker thread, one client per thread.
Failures surface as :class:`MailboxError` subclasses whose messages are fixed
sentences written here: the server's own words (greetings, NO texts) never reach
the user, since they may carry internal host names and are not written for them.
Nor does anything tell a refused port from a silent one or from a service that is
not IMAP. Where a connection may go at all is ``kit.netpolicy``'s decision, made
before any packet leaves; the connection then goes to the vetted address, with the
host name kept for the certificate check.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import imaplib
import re
import socket
import ssl
import time
from collections.abc import Collection, Iterator, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from imapclient import IMAPClient, SocketTimeout
from imapclient.exceptions import (
    CapabilityError,
    IMAPClientAbortError,
    IMAPClientError,
    LoginError,
)

from mailbeacon.kit.netpolicy import (
    AddressPolicy,
    AddressRefused,
    HostNotFound,
    Rule,
    Unreachable,
    VettedHost,
    classify,
    connect_vetted,
    vet_host,
)
from mailbeacon.kit.tls_errors import not_a_mail_server, ssl_cause, tls_failure_reason
from mailbeacon.models.mailbox import Security
from mailbeacon.sync.imap_responses import any_change, as_text, as_utc, header_item

SEEN = "\\Seen"
DELETED = "\\Deleted"
SENT = "\\Sent"

# Names the common providers and clients give the Sent folder, tried in this order
# when the server marks none with \Sent (RFC 6154).
SENT_FALLBACK_NAMES = (
    "Sent",
    "Sent Items",
    "Sent Messages",
    "[Gmail]/Sent Mail",
    "INBOX.Sent",
)

# RFC 2177 section 3: clients should re-issue IDLE at least every 29 minutes.
MAX_IDLE_SECONDS = 29 * 60
# Without IDLE, how often the mailbox is asked for news while waiting.
POLL_SECONDS = 30.0
# An IDLE wait that ends this long before its deadline with nothing read ended on EOF.
_EARLY = 0.05


class Stage(StrEnum):
    CONNECT = "connect"
    TLS = "tls"
    AUTH = "auth"
    OK = "ok"


class FetchPart(StrEnum):
    HEADERS = "headers"
    FULL = "full"


class MailboxError(Exception):
    """The mailbox could not do what was asked; ``message`` says so in plain words."""

    stage: Stage = Stage.OK
    temporary: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CannotConnect(MailboxError):
    stage = Stage.CONNECT
    temporary = True


class AddressNotAllowed(MailboxError):
    """The address policy refuses the host; nothing was sent to it."""

    stage = Stage.CONNECT


class TlsFailed(MailboxError):
    stage = Stage.TLS


class SignInFailed(MailboxError):
    stage = Stage.AUTH


class WrongPassword(SignInFailed):
    pass


class FolderMissing(MailboxError):
    pass


class UidValidityChanged(MailboxError):
    """The folder's UIDs were renumbered (RFC 3501 section 2.3.1.1): start over."""


class ConnectionLost(MailboxError):
    temporary = True


class ServerRefused(MailboxError):
    """The server answered NO or BAD to a command for a reason not covered above."""


@dataclass(frozen=True, slots=True)
class ImapSettings:
    host: str
    port: int
    security: Security
    username: str
    password: str
    # Seconds for the TCP connection and for each read after it.
    timeout: float = 30.0
    # None verifies the certificate and host name against the system's trust store;
    # tests pass a context that trusts their own certificate.
    ssl_context: ssl.SSLContext | None = None
    # Where the host may be; the strictest policy unless the caller says otherwise.
    policy: AddressPolicy = field(default_factory=AddressPolicy)


@dataclass(frozen=True, slots=True)
class ConnectionTestResult:
    ok: bool
    stage: Stage
    message: str


@dataclass(frozen=True, slots=True)
class Folder:
    name: str
    delimiter: str | None
    flags: frozenset[str]

    @property
    def selectable(self) -> bool:
        return not ({"\\noselect", "\\nonexistent"} & {f.lower() for f in self.flags})


@dataclass(frozen=True, slots=True)
class FolderState:
    """What SELECT reported: a stored UID is only meaningful with the same ``uidvalidity``."""

    name: str
    uidvalidity: int
    uidnext: int
    exists: int


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    internal_date: dt.datetime  # aware, UTC
    flags: frozenset[str]
    data: bytes  # the header block, or the whole message, as the server stores it


@dataclass(frozen=True, slots=True)
class Deletion:
    uids: tuple[int, ...]
    # False when the messages are only flagged \Deleted: without UIDPLUS, a plain
    # EXPUNGE would also remove messages someone else flagged, so it is not sent.
    expunged: bool


class MailboxClient(Protocol):
    """One signed-in IMAP session. Blocking: run it in a worker thread."""

    def close(self) -> None: ...

    def list_folders(self) -> list[Folder]: ...

    def find_sent_folder(self) -> str | None: ...

    def append(
        self,
        folder: str,
        message: bytes,
        *,
        flags: Sequence[str] = (SEEN,),
        when: dt.datetime | None = None,
    ) -> int | None: ...

    def find_by_message_id(self, folder: str, message_id: str) -> list[int]: ...

    def delete(self, folder: str, uids: Collection[int]) -> Deletion: ...

    def delete_by_message_id(
        self, folder: str, message_id: str, *, keep: Collection[int] = ()
    ) -> Deletion: ...

    def select(self, folder: str) -> FolderState: ...

    def fetch_since(
        self,
        folder: str,
        after_uid: int,
        *,
        part: FetchPart = FetchPart.HEADERS,
        uidvalidity: int | None = None,
        batch_size: int = 500,
    ) -> Iterator[list[FetchedMessage]]: ...

    def search_since(self, folder: str, since: dt.date) -> list[int]: ...

    def fetch(
        self,
        folder: str,
        uids: Sequence[int],
        *,
        part: FetchPart = FetchPart.HEADERS,
        batch_size: int = 500,
    ) -> Iterator[list[FetchedMessage]]: ...

    def supports_idle(self) -> bool: ...

    def wait_for_changes(self, folder: str, timeout: float) -> bool: ...


@functools.cache
def _system_tls_context() -> ssl.SSLContext:
    return ssl.create_default_context()


def _where(settings: ImapSettings) -> str:
    return f"{settings.host}:{settings.port}"


def _response_code(exc: BaseException) -> str:
    """The RFC 5530 response code in brackets, if the server gave one."""
    found = re.search(r"\[([A-Z-]+)", str(exc))
    return found.group(1) if found else ""


class _HandshakeFailed(Exception):
    """Implicit TLS failed on a vetted connection (the cause says how)."""


class _VettedIMAP4(imaplib.IMAP4):
    """imaplib's client on a connection to a vetted address.

    ``host`` stays the name: implicit TLS here and imaplib's STARTTLS check the
    certificate against it (and send it as SNI).
    """

    def __init__(
        self, vetted: VettedHost, port: int, timeout: float, tls: ssl.SSLContext | None
    ) -> None:
        self._vetted = vetted
        self._tls = tls
        super().__init__(vetted.name, port, timeout)

    def _create_socket(self, timeout: float | None = None) -> socket.socket:
        sock = connect_vetted(self._vetted, self.port, timeout or 30.0)
        if self._tls is None:
            return sock
        try:
            return self._tls.wrap_socket(sock, server_hostname=self.host)
        except OSError as exc:  # ssl.SSLError, a timeout, a reset
            sock.close()
            raise _HandshakeFailed() from exc


class _VettedIMAPClient(IMAPClient):  # type: ignore[misc]
    """IMAPClient over :class:`_VettedIMAP4`.

    IMAPClient cannot be handed a socket; it builds its imaplib object in
    ``_create_IMAP4`` (imapclient 4.1), the one method replaced here.
    """

    def __init__(
        self, vetted: VettedHost, port: int, tls: ssl.SSLContext | None, timeout: float
    ) -> None:
        self._vetted = vetted
        self._tls = tls
        super().__init__(
            vetted.name,
            port=port,
            ssl=tls is not None,
            ssl_context=tls,
            timeout=SocketTimeout(connect=timeout, read=timeout),
        )

    def _create_IMAP4(self) -> imaplib.IMAP4:
        return _VettedIMAP4(self._vetted, self.port, self._timeout.connect, self._tls)


_PLAIN_REMOTE = (
    "Connecting without encryption is only allowed to this machine (127.0.0.1 or "
    "localhost); choose TLS or STARTTLS."
)


def _vetted(settings: ImapSettings) -> VettedHost:
    """The host under the address policy, resolved once; raises a :class:`MailboxError`."""
    try:
        vetted = vet_host(settings.host, settings.port, settings.policy)
    except AddressRefused as exc:
        raise AddressNotAllowed(exc.message) from exc
    except HostNotFound as exc:
        raise CannotConnect(f"The host name {settings.host} cannot be found.") from exc
    # Judged by the addresses, not the name: "localhost" could be made to point anywhere.
    if settings.security == Security.NONE and any(
        classify(address) != Rule.LOOPBACK for address in vetted.addresses
    ):
        raise TlsFailed(_PLAIN_REMOTE)
    return vetted


def open_mailbox(settings: ImapSettings) -> ImapMailbox:
    """Connect, secure and sign in; raises a :class:`MailboxError` naming the failed stage."""
    where = _where(settings)
    vetted = _vetted(settings)
    context = settings.ssl_context or _system_tls_context()
    try:
        client = _VettedIMAPClient(
            vetted,
            settings.port,
            context if settings.security == Security.TLS else None,
            settings.timeout,
        )
    except Unreachable as exc:
        # Refused and unanswered read alike: the difference is a port scanner's answer.
        raise CannotConnect(
            f"Could not connect to {where}: nothing answered, or the connection was refused."
        ) from exc
    except _HandshakeFailed as exc:
        raise TlsFailed(f"{where}: {tls_failure_reason(exc)}.") from exc
    except (OSError, IMAPClientError) as exc:
        # Connected, but no IMAP greeting: silence, another service's banner and a
        # connection closed at once all read the same.
        raise CannotConnect(
            not_a_mail_server(
                where, implicit_tls=settings.security == Security.TLS, usual_tls_port=993
            )
        ) from exc
    try:
        client.normalise_times = False
        if settings.security == Security.STARTTLS:
            _starttls(client, context, where)
        _login(client, settings, where)
    except BaseException:
        with contextlib.suppress(Exception):
            client.shutdown()
        raise
    return ImapMailbox(client, settings)


def _starttls(client: IMAPClient, context: ssl.SSLContext, where: str) -> None:
    try:
        client.starttls(context)
    except CapabilityError as exc:
        raise TlsFailed(f"{where} does not offer STARTTLS; try TLS (usually port 993).") from exc
    except ssl.SSLError as exc:
        raise TlsFailed(f"{where}: {tls_failure_reason(exc)}.") from exc
    except (OSError, IMAPClientAbortError) as exc:
        raise TlsFailed(f"{where} closed the connection during STARTTLS.") from exc
    except IMAPClientError as exc:
        cause = ssl_cause(exc)
        reason = tls_failure_reason(cause) if cause is not None else "the server refused STARTTLS"
        raise TlsFailed(f"{where}: {reason}.") from exc


def _login(client: IMAPClient, settings: ImapSettings, where: str) -> None:
    try:
        if client.has_capability("LOGINDISABLED"):
            raise SignInFailed(
                f"{where} does not allow signing in on this connection; choose TLS or STARTTLS."
            )
        client.login(settings.username, settings.password)
    except LoginError as exc:
        code = _response_code(exc)
        if code == "UNAVAILABLE":
            failure = SignInFailed(f"{where} cannot sign anyone in right now; try again later.")
            failure.temporary = True
            raise failure from exc
        if code == "PRIVACYREQUIRED":
            raise SignInFailed(
                f"{where} only allows signing in over an encrypted connection."
            ) from exc
        raise WrongPassword(f"{where} refused the user name or password.") from exc
    except (OSError, IMAPClientAbortError) as exc:
        raise ConnectionLost(f"{where} closed the connection while signing in.") from exc
    except IMAPClientError as exc:
        raise SignInFailed(f"{where} refused to sign in.") from exc


def test_imap_connection(settings: ImapSettings) -> ConnectionTestResult:
    """Try the settings once and say which stage failed (connect, TLS, sign-in) and why."""
    try:
        mailbox = open_mailbox(settings)
    except MailboxError as exc:
        return ConnectionTestResult(False, exc.stage, exc.message)
    mailbox.close()
    secured = {
        Security.TLS: "over TLS",
        Security.STARTTLS: "with STARTTLS",
        Security.NONE: "without encryption (this machine only)",
    }[settings.security]
    return ConnectionTestResult(
        True, Stage.OK, f"Signed in to {_where(settings)} {secured} as {settings.username}."
    )


# Keep pytest from collecting the public helper above as a test when it is imported.
test_imap_connection.__test__ = False  # type: ignore[attr-defined]


_FETCH_ITEMS = {
    FetchPart.HEADERS: ("BODY.PEEK[HEADER]", b"BODY[HEADER]"),
    FetchPart.FULL: ("BODY.PEEK[]", b"BODY[]"),
}
_SAFE_SEARCH = re.compile(r"[!#$&'+-/0-9:;<=>?@A-Z\[^_`a-z|~]+")
_APPENDUID = re.compile(rb"\[APPENDUID \d+ (\d+)\]", re.IGNORECASE)


def normalise_message_id(value: str) -> str:
    """``<local@domain>`` without surrounding space; empty when there is none."""
    value = value.strip()
    found = re.search(r"<[^<>\s]+>", value)
    if found:
        return found.group(0)
    return f"<{value}>" if value and " " not in value else ""


class ImapMailbox:
    """A signed-in IMAPClient session behind the :class:`MailboxClient` interface."""

    def __init__(self, client: IMAPClient, settings: ImapSettings) -> None:
        self._client = client
        self._settings = settings
        self._where = _where(settings)
        self._selected: FolderState | None = None
        self._readonly = True

    def __enter__(self) -> ImapMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """LOGOUT briefly; the socket is closed whatever the server says."""
        client = self._client
        with contextlib.suppress(Exception):
            client.socket().settimeout(5)
            client.logout()
        with contextlib.suppress(Exception):
            client.shutdown()

    def interrupt(self) -> None:
        """End the session from another thread: a call blocked in it (an IDLE wait) fails
        at once with :class:`ConnectionLost`. Shutting a socket down is safe to do
        while another thread reads it; the blocked read then sees the end of the stream."""
        with contextlib.suppress(OSError):
            self._client.socket().shutdown(socket.SHUT_RDWR)

    # -- errors ---------------------------------------------------------------------

    @contextlib.contextmanager
    def _command(self, what: str, folder: str | None = None) -> Iterator[None]:
        try:
            yield
        except MailboxError:
            raise
        except (IMAPClientAbortError, OSError) as exc:
            self._selected = None
            raise ConnectionLost(f"The connection to {self._where} was lost while {what}.") from exc
        except IMAPClientError as exc:
            code = _response_code(exc)
            # imaplib keeps some response codes to itself (SELECT's NONEXISTENT), so
            # a refused command on a folder also asks whether the folder is there.
            if folder is not None and (
                code in ("NONEXISTENT", "TRYCREATE") or not self._folder_exists(folder)
            ):
                raise FolderMissing(f"The folder {folder!r} does not exist on the server.") from exc
            if code in ("OVERQUOTA", "LIMIT"):
                raise ServerRefused(f"The mailbox is full; {what} was refused.") from exc
            if code == "UNAVAILABLE":
                refused = ServerRefused(f"The server is busy; {what} failed, try again later.")
                refused.temporary = True
                raise refused from exc
            raise ServerRefused(f"The server refused {what}.") from exc

    def _folder_exists(self, folder: str) -> bool:
        try:
            listed = self._client.list_folders("", folder)
        except (IMAPClientError, OSError):
            return True  # unknown: report the original failure instead
        return any(str(name) == folder for _flags, _delimiter, name in listed)

    # -- folders ----------------------------------------------------------------

    def list_folders(self) -> list[Folder]:
        """Every folder, with its attributes (special-use ones included, RFC 6154)."""
        with self._command("listing the folders"):
            listed = self._client.list_folders()
        return [
            Folder(
                str(name),
                delimiter.decode() if isinstance(delimiter, bytes) else delimiter,
                frozenset(f.decode() if isinstance(f, bytes) else str(f) for f in flags),
            )
            for flags, delimiter, name in listed
        ]

    def find_sent_folder(self) -> str | None:
        """The folder marked \\Sent, else the first of the usual names that exists."""
        folders = [f for f in self.list_folders() if f.selectable]
        for folder in folders:
            if any(flag.lower() == SENT.lower() for flag in folder.flags):
                return folder.name
        by_name = {f.name.lower(): f.name for f in folders}
        prefixes = [""]
        # Courier-style servers put personal folders under "INBOX." (RFC 2342 namespace).
        for folder in folders:
            if folder.name.upper() == "INBOX" and folder.delimiter:
                prefixes.append("INBOX" + folder.delimiter)
        for name in SENT_FALLBACK_NAMES:
            for prefix in prefixes:
                found = by_name.get((prefix + name).lower())
                if found is not None:
                    return found
        return None

    # -- append and delete ----------------------------------------------------------

    def append(
        self,
        folder: str,
        message: bytes,
        *,
        flags: Sequence[str] = (SEEN,),
        when: dt.datetime | None = None,
    ) -> int | None:
        """Store a message in ``folder``; returns its UID when the server says (UIDPLUS)."""
        with self._command(f"saving a message to {folder!r}", folder):
            response = self._client.append(folder, message, flags=tuple(flags), msg_time=when)
        found = _APPENDUID.search(response if isinstance(response, bytes) else b"")
        return int(found.group(1)) if found else None

    def find_by_message_id(self, folder: str, message_id: str) -> list[int]:
        """UIDs in ``folder`` whose Message-ID header is exactly ``message_id``."""
        wanted = normalise_message_id(message_id)
        if not wanted:
            return []
        # SEARCH HEADER matches substrings (RFC 3501 section 6.4.4), and a few
        # characters cannot travel unquoted: search on the longest plain run, then
        # keep only exact matches, read back from the headers themselves.
        term = max(_SAFE_SEARCH.findall(wanted), key=len, default="")
        if len(term) < 6:
            return []
        self._select(folder, readonly=True)
        with self._command(f"searching {folder!r}", folder):
            candidates = self._client.search(["HEADER", "Message-ID", term])
            if not candidates:
                return []
            fetched = self._client.fetch(candidates, ["BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)]"])
        exact = []
        for uid, item in fetched.items():
            header = header_item(item)
            if header is None:
                continue
            value = header.decode("ascii", "replace").partition(":")[2]
            if normalise_message_id(" ".join(value.split())) == wanted:
                exact.append(int(uid))
        return sorted(exact)

    def delete(self, folder: str, uids: Collection[int]) -> Deletion:
        """Flag ``uids`` \\Deleted and expunge only them (UIDPLUS), or leave them flagged."""
        chosen = sorted(set(uids))
        if not chosen:
            return Deletion((), expunged=True)
        self._select(folder, readonly=False)
        with self._command(f"deleting messages in {folder!r}", folder):
            self._client.add_flags(chosen, [DELETED], silent=True)
            if self._client.has_capability("UIDPLUS"):
                self._client.uid_expunge(chosen)
                return Deletion(tuple(chosen), expunged=True)
            # Without UID EXPUNGE a plain EXPUNGE removes every \Deleted message:
            # safe only when ours are the only ones so flagged.
            flagged = set(self._client.search(["DELETED"]))
            if flagged <= set(chosen):
                self._client.expunge()
                return Deletion(tuple(chosen), expunged=True)
        return Deletion(tuple(chosen), expunged=False)

    def delete_by_message_id(
        self, folder: str, message_id: str, *, keep: Collection[int] = ()
    ) -> Deletion:
        """Delete every copy of one message from ``folder`` except the UIDs in ``keep``."""
        found = [uid for uid in self.find_by_message_id(folder, message_id) if uid not in keep]
        return self.delete(folder, found)

    # -- reading ----------------------------------------------------------------

    def select(self, folder: str) -> FolderState:
        """Open ``folder`` read-only and report UIDVALIDITY, UIDNEXT and the message count."""
        return self._select(folder, readonly=True, force=True)

    def _select(self, folder: str, *, readonly: bool, force: bool = False) -> FolderState:
        current = self._selected
        if (
            not force
            and current is not None
            and current.name == folder
            and (readonly or not self._readonly)
        ):
            return current
        with self._command(f"opening {folder!r}", folder):
            response = self._client.select_folder(folder, readonly=readonly)
        state = FolderState(
            folder,
            uidvalidity=int(response.get(b"UIDVALIDITY", 0)),
            uidnext=int(response.get(b"UIDNEXT", 0)),
            exists=int(response.get(b"EXISTS", 0)),
        )
        self._selected = state
        self._readonly = readonly
        return state

    def fetch_since(
        self,
        folder: str,
        after_uid: int,
        *,
        part: FetchPart = FetchPart.HEADERS,
        uidvalidity: int | None = None,
        batch_size: int = 500,
    ) -> Iterator[list[FetchedMessage]]:
        """Messages with a UID above ``after_uid``, oldest first, in batches.

        Pass the ``uidvalidity`` the stored UID belongs to: if the folder was
        renumbered since, :class:`UidValidityChanged` is raised instead of
        returning messages under UIDs that now mean something else.
        """
        state = self._select(folder, readonly=True, force=True)
        if uidvalidity is not None and state.uidvalidity != uidvalidity:
            raise UidValidityChanged(
                f"The folder {folder!r} was renumbered by the server; it must be read again."
            )
        if state.uidnext and after_uid + 1 >= state.uidnext:
            return
        with self._command(f"searching {folder!r}", folder):
            found = self._client.search(["UID", f"{after_uid + 1}:*"])
        # "n:*" always includes the highest UID, even when it is below n (RFC 3501
        # section 6.4.8), so the range alone does not prove a message is new.
        uids = sorted(uid for uid in found if uid > after_uid)
        yield from self._fetch_batches(folder, uids, part, batch_size)

    def search_since(self, folder: str, since: dt.date) -> list[int]:
        """UIDs of messages that arrived on or after ``since`` (INTERNALDATE, the server's day)."""
        self._select(folder, readonly=True)
        with self._command(f"searching {folder!r}", folder):
            return sorted(self._client.search(["SINCE", since]))

    def fetch(
        self,
        folder: str,
        uids: Sequence[int],
        *,
        part: FetchPart = FetchPart.HEADERS,
        batch_size: int = 500,
    ) -> Iterator[list[FetchedMessage]]:
        """The given messages in batches, oldest UID first; vanished UIDs are skipped."""
        self._select(folder, readonly=True)
        yield from self._fetch_batches(folder, sorted(set(uids)), part, batch_size)

    def _fetch_batches(
        self, folder: str, uids: list[int], part: FetchPart, batch_size: int
    ) -> Iterator[list[FetchedMessage]]:
        item, key = _FETCH_ITEMS[part]
        for start in range(0, len(uids), max(1, batch_size)):
            batch = uids[start : start + batch_size]
            # One UID FETCH per batch; the answer for a few hundred headers is a few
            # hundred kilobytes, which keeps memory flat however large the folder.
            with self._command(f"reading messages in {folder!r}", folder):
                fetched = self._client.fetch(batch, [item, "INTERNALDATE", "FLAGS"])
            messages = []
            for uid in batch:
                entry = fetched.get(uid)
                if entry is None:
                    continue
                data = entry.get(key)
                if not isinstance(data, bytes):
                    continue
                messages.append(
                    FetchedMessage(
                        uid=uid,
                        internal_date=as_utc(entry.get(b"INTERNALDATE")),
                        flags=frozenset(as_text(f) for f in entry.get(b"FLAGS", ())),
                        data=data,
                    )
                )
            yield messages

    # -- waiting ----------------------------------------------------------------

    def supports_idle(self) -> bool:
        with self._command("reading the server's capabilities"):
            return bool(self._client.has_capability("IDLE"))

    def wait_for_changes(self, folder: str, timeout: float) -> bool:
        """Block until ``folder`` changes (new, expunged or re-flagged mail) or ``timeout``.

        Uses IDLE (RFC 2177) where offered, capped at 29 minutes per call;
        otherwise asks with NOOP every 30 seconds. True when something changed.
        """
        self._select(folder, readonly=True)
        deadline = time.monotonic() + min(max(timeout, 0.0), MAX_IDLE_SECONDS)
        if not self.supports_idle():
            return self._poll_for_changes(folder, deadline)
        client = self._client
        changed = False
        with self._command(f"waiting for news in {folder!r}", folder):
            client.idle()
            try:
                while not changed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    responses = client.idle_check(timeout=left)
                    if not responses and deadline - time.monotonic() > _EARLY:
                        # Woken with nothing to read: the server closed the connection
                        # (IMAPClient reads EOF as "no responses"); waiting again would
                        # only wake again at once.
                        raise ConnectionLost(
                            f"{self._where} closed the connection while waiting for news."
                        )
                    changed = any_change(responses)
            finally:
                _done, responses = client.idle_done()
            changed = changed or any_change(responses)
        return changed

    def _poll_for_changes(self, folder: str, deadline: float) -> bool:
        while True:
            with self._command(f"waiting for news in {folder!r}", folder):
                _text_reply, responses = self._client.noop()
            if any_change(responses):
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(POLL_SECONDS, left))
