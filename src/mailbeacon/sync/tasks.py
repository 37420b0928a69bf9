"""The sync worker: each mailbox's INBOX read for replies, and Sent-folder copies saved.

Runs inside ``serve`` (like the outbox worker) and alone as ``mailbeacon sync``.
Per mailbox, one *session* at a time, anywhere (a lease in ``mailbox_sync_states``,
see ``claims``): connect, sign in, read what is new, store what answers the
user's email, and then, where the server has IDLE (RFC 2177) and it is not
switched off, stay connected and wait for news; without IDLE the session ends
and the next one starts ``SYNC_POLL_SECONDS`` later.

**Reading.** The first sync reads the last ``SYNC_FIRST_DAYS`` days of INBOX
(SEARCH SINCE), later ones every UID above the last one read. Header blocks
come in batches; ``screening`` picks the few worth reading whole, and each
batch's stored mail and the new last UID commit together, while the lease is
still held (a batch with nothing to store commits only every ``QUIET_BATCHES``).
A crash or a restart goes on from the last committed batch, and what is read
twice is stored once (``received_mail`` is unique per incoming Message-ID). A
changed UIDVALIDITY (the server renumbered the folder) starts the first sync
over; nothing it reads again is stored again.

**Errors.** A failure ends the session and is written down in one sentence for
Settings (server down, wrong password, ...); the next try waits
``SYNC_BACKOFF_SECONDS``, doubling up to an hour, so a broken mailbox never
spins. Saving new settings clears the wait. Sending never depends on any of it.

**Sent folder.** ``sent_folder_copies`` rows (queued when a message's copies
are all settled) are claimed, appended over a connection of their own (an
IDLE session is not interrupted), and retried with back-off when they fail;
the email's page shows where each one stands.

IMAP calls block, so sessions run in threads of the worker's own pool: the
event loop's default executor stays free for the outbox worker and the ingest.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import secrets
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.netpolicy import AddressPolicy, mail_server_policy
from mailbeacon.kit.workers import backoff_seconds, wake_from_any_thread
from mailbeacon.models import SentCopyStatus, SyncState
from mailbeacon.sync import claims, repository
from mailbeacon.sync.access import MailboxAccess, load_access
from mailbeacon.sync.claims import SentJob
from mailbeacon.sync.imap import (
    FetchedMessage,
    FetchPart,
    ImapMailbox,
    MailboxError,
    UidValidityChanged,
    open_mailbox,
)
from mailbeacon.sync.ports import SentCopySource
from mailbeacon.sync.receiving import Arrival, Receiver
from mailbeacon.sync.screening import read_header_facts, worth_reading
from mailbeacon.sync.sent_folder import put_sent_copy

log = logging.getLogger(__name__)

T = TypeVar("T")

INBOX = "INBOX"
BACKOFF_CAP_SECONDS = 3600.0
STOP_GRACE_SECONDS = 10.0
# Sent-folder copies one connection saves in a row.
SENT_BATCH = 50
# Messages read whole per FETCH: replies carry attachments, and a batch of them is
# held in memory until it is stored.
FULL_BATCH = 25
# Batches with nothing to store are committed (progress only) every so many: a crash
# reads them again, which stores nothing twice, and a first sync saves its commits.
QUIET_BATCHES = 10


class LeaseLost(Exception):
    """Another worker holds the mailbox now; this session's uncommitted work is dropped."""


def default_worker_id() -> str:
    return f"sync:{socket.gethostname()[:50]}:{os.getpid()}:{secrets.token_hex(4)}"


@dataclass
class SyncStats:
    sessions: int = 0
    headers: int = 0  # messages whose headers were read
    fetched: int = 0  # messages read whole
    stored: int = 0  # replies, automatic replies and bounces stored
    sent_copies: int = 0  # copies saved to Sent
    failures: int = 0
    skipped_busy: int = 0  # mailboxes another worker held

    def add(self, **counts: int) -> None:
        for name, value in counts.items():
            setattr(self, name, getattr(self, name) + value)


@dataclass
class _Session:
    mailbox_id: int
    hold: bool
    future: asyncio.Future[None] | None = None
    # The open connection, while there is one (set by the session's thread).
    client: ImapMailbox | None = None


class SyncWorker:
    """Reads every IMAP mailbox and saves Sent copies; see the module's docstring."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        credentials: CredentialBox,
        *,
        sent_copies: SentCopySource,
        receiver: Receiver,
        worker_id: str | None = None,
        poll_seconds: float = 2.0,
        idle_slice_seconds: float = 5.0,
        batch_size: int = 500,
        ssl_context: ssl.SSLContext | None = None,
        policy: AddressPolicy | None = None,
    ) -> None:
        self.database = database
        self.worker_id = (worker_id or default_worker_id())[:100]
        self.poll_seconds = poll_seconds
        self.idle_slice_seconds = idle_slice_seconds
        self.batch_size = batch_size
        self.use_idle = settings.SYNC_USE_IDLE
        self.sync_poll_seconds = settings.SYNC_POLL_SECONDS
        self.first_days = settings.SYNC_FIRST_DAYS
        self.backoff_seconds = settings.SYNC_BACKOFF_SECONDS
        self.lease_seconds = settings.SYNC_LEASE_SECONDS
        self.concurrency = settings.SYNC_CONCURRENCY
        self.timeout = settings.SYNC_TIMEOUT_SECONDS
        self.sent_max_attempts = settings.SENT_COPY_MAX_ATTEMPTS
        self.policy = policy or mail_server_policy(settings)
        self.ssl_context = ssl_context
        self.sent_copies = sent_copies
        self.receiver = receiver
        self._credentials = credentials
        self._stopping = threading.Event()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._sessions: dict[int, _Session] = {}
        self._sent_runs: set[asyncio.Future[None]] = set()
        self.stats = SyncStats()
        self._stats_lock = threading.Lock()

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Start the loop that looks for due mailboxes and Sent copies."""
        if self._task is not None:
            return
        self._stopping.clear()
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._run(), name="mailbeacon-sync-worker")

    async def stop(self) -> None:
        """Start nothing more, end the sessions (IDLE waits end within a slice), and stop."""
        self._stopping.set()
        self._wake.set()
        for session in list(self._sessions.values()):
            if session.client is not None:
                session.client.interrupt()  # an IDLE wait ends now, not at its slice's end
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._wait_all(STOP_GRACE_SECONDS)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    def wake(self) -> None:
        """Look for due work now (a message was delivered); safe from any thread."""
        wake_from_any_thread(self._loop, self._wake)

    async def run_once(self) -> SyncStats:
        """One pass over every due mailbox and Sent copy, without staying connected."""
        self._loop = asyncio.get_running_loop()
        self._stopping.clear()
        before = SyncStats(**vars(self.stats))
        started = await self._pass(hold=False)
        if started:
            await asyncio.wait(started)
            for future in started:
                future.result()  # what killed a session or a save kills this pass too
        after = self.stats
        return SyncStats(**{k: getattr(after, k) - getattr(before, k) for k in vars(after)})

    async def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            try:
                await self._pass(hold=True)
            except Exception:
                log.exception("sync worker pass failed; trying again shortly")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _wait_all(self, grace: float | None) -> None:
        pending = [s.future for s in self._sessions.values() if s.future is not None]
        pending += list(self._sent_runs)
        if pending:
            await asyncio.wait(pending, timeout=grace)

    def _in_thread(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=2 * self.concurrency + 1, thread_name_prefix="mailbeacon-sync"
            )
        loop = asyncio.get_running_loop()
        return loop.run_in_executor(self._executor, fn, *args)

    async def _pass(self, *, hold: bool) -> list[asyncio.Future[None]]:
        """Start a session per due mailbox and a save per mailbox with due Sent copies."""
        started: list[asyncio.Future[None]] = []
        mailbox_ids, jobs = await self._in_thread(self._find_work)
        for mailbox_id in mailbox_ids:
            if mailbox_id in self._sessions or len(self._sessions) >= self.concurrency:
                continue
            session = _Session(mailbox_id, hold)
            self._sessions[mailbox_id] = session
            session.future = future = self._in_thread(self._session, session)
            future.add_done_callback(functools.partial(self._session_ended, mailbox_id))
            started.append(future)
        by_mailbox: dict[int, list[SentJob]] = {}
        for job in jobs:
            by_mailbox.setdefault(job.mailbox_id, []).append(job)
        for mailbox_id, mine in by_mailbox.items():
            run = self._in_thread(self._save_sent_copies, mailbox_id, mine)
            self._sent_runs.add(run)
            run.add_done_callback(self._save_ended)
            started.append(run)
        return started

    def _session_ended(self, mailbox_id: int, future: asyncio.Future[None]) -> None:
        self._sessions.pop(mailbox_id, None)
        self._log_failure(future)

    def _save_ended(self, future: asyncio.Future[None]) -> None:
        self._sent_runs.discard(future)
        self._log_failure(future)

    @staticmethod
    def _log_failure(future: asyncio.Future[None]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("a sync thread ended on an error", exc_info=future.exception())

    # -- finding work (runs in a thread) ------------------------------------------

    def _find_work(self) -> tuple[list[int], list[SentJob]]:
        now = utcnow()
        with self.database.unit_of_work(immediate=False) as s:
            syncable = claims.syncable_mailbox_ids(s)
            known = claims.mailboxes_with_state(s, syncable)
        missing = [m for m in syncable if m not in known]
        if missing:
            with self.database.unit_of_work() as s:
                claims.ensure_states(s, missing, now)
        with self.database.unit_of_work(immediate=False) as s:
            due = claims.due_mailbox_ids(s, now)
            has_sent = claims.has_due_sent_copies(s, now)
        jobs: list[SentJob] = []
        if has_sent:
            with self.database.unit_of_work() as s:
                jobs = claims.claim_sent_copies(
                    s, self.worker_id, now, self.lease_seconds, SENT_BATCH
                )
        return due, jobs

    # -- one mailbox's INBOX (runs in a thread) -----------------------------------

    def _session(self, session: _Session) -> None:
        mailbox_id = session.mailbox_id
        now = utcnow()
        with self.database.unit_of_work() as s:
            if not claims.take_lease(s, mailbox_id, self.worker_id, now, self.lease_seconds):
                self._count(skipped_busy=1)
                return
            access = load_access(
                s,
                mailbox_id,
                self._credentials,
                policy=self.policy,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
        self._count(sessions=1)
        try:
            if access is None:
                return
            self._start_state(access)
            if access.problem:
                self._record_failure(access, access.problem)
                return
            self._connected_session(session, access)
        except LeaseLost:
            log.warning("mailbox %d: another worker took over the sync", mailbox_id)
        except Exception:
            log.exception("mailbox %d: sync failed unexpectedly", mailbox_id)
            if access is not None:
                self._record_failure(access, "The sync stopped on an internal error; see the log.")
        finally:
            with contextlib.suppress(Exception), self.database.unit_of_work() as s:
                claims.release_lease(s, mailbox_id, self.worker_id)

    def _connected_session(self, session: _Session, access: MailboxAccess) -> None:
        try:
            with open_mailbox(access.imap) as mailbox:
                session.client = mailbox
                if self._stopping.is_set():
                    return
                self._sync_loop(mailbox, access, session.hold)
        except MailboxError as exc:
            if not self._stopping.is_set():  # else: ended by stop() (``interrupt``)
                self._record_failure(access, exc.message)
        finally:
            session.client = None

    def _sync_loop(self, mailbox: ImapMailbox, access: MailboxAccess, hold: bool) -> None:
        idle = hold and self.use_idle and mailbox.supports_idle()
        renewed = time.monotonic()
        while True:
            self._sync_inbox(mailbox, access)
            self._record_success(access, wait=not idle)
            renewed = time.monotonic()
            if not idle or self._stopping.is_set():
                return
            while not self._stopping.is_set():
                changed = mailbox.wait_for_changes(INBOX, self.idle_slice_seconds)
                if time.monotonic() - renewed > self.lease_seconds / 3:
                    self._renew(access)
                    renewed = time.monotonic()
                if changed:
                    break

    def _renew(self, access: MailboxAccess) -> None:
        until = utcnow() + timedelta(seconds=self.lease_seconds)
        with self.database.unit_of_work() as s:
            if not claims.hold_lease(s, access.mailbox_id, self.worker_id, until):
                raise LeaseLost()

    def _write_state(self, access: MailboxAccess, **values: Any) -> None:
        now = utcnow()
        values.setdefault("updated_at", now)
        values.setdefault("lease_until", now + timedelta(seconds=self.lease_seconds))
        with self.database.unit_of_work() as s:
            if not claims.update_state(s, access.mailbox_id, self.worker_id, **values):
                raise LeaseLost()

    def _start_state(self, access: MailboxAccess) -> None:
        """Start over for another account; forget the back-off once settings were saved."""
        with self.database.unit_of_work(immediate=False) as s:
            state = claims.state_of(s, access.mailbox_id)
            assert state is not None
            key, seen = state.account_key, state.settings_seen_at
        values: dict[str, Any] = {"settings_seen_at": access.settings_updated_at}
        if key != access.account_key:
            values.update(
                account_key=access.account_key,
                uidvalidity=None,
                last_uid=0,
                first_sync_done=False,
                since=None,
            )
        if seen is None or as_utc(seen) != as_utc(access.settings_updated_at):
            values.update(failures=0)
        self._write_state(access, **values)

    def _sync_inbox(self, mailbox: ImapMailbox, access: MailboxAccess) -> None:
        with self.database.unit_of_work(immediate=False) as s:
            state = claims.state_of(s, access.mailbox_id)
            assert state is not None
            uidvalidity, last_uid = state.uidvalidity, state.last_uid
            first_done, since = state.first_sync_done, state.since
        folder = mailbox.select(INBOX)
        if uidvalidity != folder.uidvalidity or since is None:
            if uidvalidity is not None and uidvalidity != folder.uidvalidity:
                log.warning(
                    "mailbox %d: INBOX was renumbered (UIDVALIDITY %s -> %s); reading it again",
                    access.mailbox_id,
                    uidvalidity,
                    folder.uidvalidity,
                )
            since = since or utcnow() - timedelta(days=self.first_days)
            uidvalidity, last_uid, first_done = folder.uidvalidity, 0, False
            self._write_state(
                access, uidvalidity=uidvalidity, last_uid=0, first_sync_done=False, since=since
            )
        if not first_done:
            day = as_utc(since).date()
            uids = [u for u in mailbox.search_since(INBOX, day) if u > last_uid]
            self._take_batches(
                mailbox,
                access,
                mailbox.fetch(INBOX, uids, part=FetchPart.HEADERS, batch_size=self.batch_size),
            )
            # Everything below UIDNEXT at the SELECT is read or older than the window.
            self._write_state(
                access,
                first_sync_done=True,
                last_uid=max([last_uid, folder.uidnext - 1, *uids]),
            )
            return
        try:
            self._take_batches(
                mailbox,
                access,
                mailbox.fetch_since(
                    INBOX,
                    last_uid,
                    part=FetchPart.HEADERS,
                    uidvalidity=uidvalidity,
                    batch_size=self.batch_size,
                ),
            )
        except UidValidityChanged:
            # Renumbered since the SELECT above: the next round starts over.
            self._write_state(access, uidvalidity=None)

    def _take_batches(
        self,
        mailbox: ImapMailbox,
        access: MailboxAccess,
        batches: Iterator[list[FetchedMessage]],
    ) -> None:
        quiet = 0
        last_uid = None
        for batch in batches:
            if not batch:
                continue
            quiet += 1
            last_uid = max(m.uid for m in batch)
            if self._take_batch(mailbox, access, batch, commit=quiet >= QUIET_BATCHES):
                quiet = 0
        if quiet and last_uid is not None:
            self._write_state(access, last_uid=last_uid)

    def _take_batch(
        self,
        mailbox: ImapMailbox,
        access: MailboxAccess,
        batch: Sequence[FetchedMessage],
        *,
        commit: bool,
    ) -> bool:
        """Store what in ``batch`` answers the user's email, and the progress with it;
        a batch with nothing to store commits only if ``commit``. True if committed."""
        now = utcnow()
        facts = [read_header_facts(m.uid, m.data) for m in batch]
        with self.database.unit_of_work(immediate=False) as s:
            owner = repository.owner(s, access.user_id)
            wanted = worth_reading(s, owner, facts, now)
        arrivals: list[Arrival] = []
        for full in mailbox.fetch(INBOX, wanted, part=FetchPart.FULL, batch_size=FULL_BATCH):
            arrivals.extend(Arrival(m.data, m.internal_date) for m in full)
        if not arrivals and not commit:
            self._count(headers=len(batch))
            return False
        with self.database.unit_of_work() as s:
            stored = self.receiver.receive(s, owner, arrivals) if arrivals else []
            done = claims.update_state(
                s,
                access.mailbox_id,
                self.worker_id,
                last_uid=max(m.uid for m in batch),
                stored_count=SyncState.stored_count + len(stored),
                updated_at=now,
                lease_until=now + timedelta(seconds=self.lease_seconds),
            )
            if not done:
                raise LeaseLost()
        self._count(headers=len(batch), fetched=len(arrivals), stored=len(stored))
        return True

    def _record_success(self, access: MailboxAccess, *, wait: bool) -> None:
        now = utcnow()
        values: dict[str, Any] = {
            "last_success_at": now,
            "last_error": "",
            "last_error_at": None,
            "failures": 0,
        }
        values["next_attempt_at"] = now + timedelta(seconds=self.sync_poll_seconds if wait else 0)
        self._write_state(access, **values)

    def _record_failure(self, access: MailboxAccess, message: str) -> None:
        self._count(failures=1)
        now = utcnow()
        with self.database.unit_of_work() as s:
            state = claims.state_of(s, access.mailbox_id)
            failures = (state.failures if state else 0) + 1
            claims.update_state(
                s,
                access.mailbox_id,
                self.worker_id,
                failures=failures,
                last_error=message[:500],
                last_error_at=now,
                next_attempt_at=now + timedelta(seconds=self.backoff(failures)),
                updated_at=now,
            )
        log.warning("mailbox %d: sync failed: %s", access.mailbox_id, message)

    def backoff(self, failures: int) -> float:
        """Seconds before the next try: doubling from the base, capped, with 10% jitter."""
        return backoff_seconds(self.backoff_seconds, failures, BACKOFF_CAP_SECONDS)

    def _count(self, **counts: int) -> None:
        with self._stats_lock:
            self.stats.add(**counts)

    # -- Sent folder (runs in a thread) -------------------------------------------

    def _save_sent_copies(self, mailbox_id: int, jobs: list[SentJob]) -> None:
        with self.database.unit_of_work(immediate=False) as s:
            access = load_access(
                s,
                mailbox_id,
                self._credentials,
                policy=self.policy,
                timeout=self.timeout,
                ssl_context=self.ssl_context,
            )
        if access is None:
            for job in jobs:
                self._settle_sent(job, "The mailbox has no IMAP settings any more.", give_up=True)
            return
        if access.problem:
            for job in jobs:
                self._settle_sent(job, access.problem)
            return
        try:
            mailbox = open_mailbox(access.imap)
        except MailboxError as exc:
            for job in jobs:
                self._settle_sent(job, exc.message)
            return
        with mailbox:
            for index, job in enumerate(jobs):
                try:
                    self._save_one(mailbox, access, job)
                except MailboxError as exc:
                    self._settle_sent(job, exc.message)
                    if exc.temporary:  # the connection is gone: the rest waits its turn
                        for rest in jobs[index + 1 :]:
                            self._settle_sent(rest, exc.message)
                        return

    def _save_one(self, mailbox: ImapMailbox, access: MailboxAccess, job: SentJob) -> None:
        with self.database.unit_of_work(immediate=False) as s:
            raw = self.sent_copies.sent_copy(s, job.message_id)
            header = repository.sent_header(s, job.message_id)
        if raw is None or header is None:
            self._settle_sent(job, "The email no longer exists.", give_up=True)
            return
        message_id, sent_at = header
        result = put_sent_copy(
            mailbox,
            raw,
            message_id,
            folder=access.sent_folder,
            replace_provider_copies=access.replace_provider_copies,
            when=sent_at,
        )
        now = utcnow()
        with self.database.unit_of_work() as s:
            claims.settle_sent_copy(
                s,
                job.id,
                self.worker_id,
                status=SentCopyStatus.DONE,
                last_error="",
                folder=result.folder[:255],
                appended_at=now,
                replaced_count=result.replaced,
                next_attempt_at=None,
            )
        self._count(sent_copies=1)

    def _settle_sent(self, job: SentJob, message: str, *, give_up: bool = False) -> None:
        """A failed attempt: try again after a back-off, or give up after the last one."""
        now = utcnow()
        final = give_up or job.attempts >= self.sent_max_attempts
        with self.database.unit_of_work() as s:
            claims.settle_sent_copy(
                s,
                job.id,
                self.worker_id,
                status=SentCopyStatus.FAILED if final else SentCopyStatus.PENDING,
                last_error=message[:500],
                next_attempt_at=None
                if final
                else now + timedelta(seconds=self.backoff(job.attempts)),
            )
        log.warning("saving message %d to Sent failed: %s", job.message_id, message)
