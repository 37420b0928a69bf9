"""The outbox worker: delivers queued copies, one SMTP transaction per recipient.

Per copy: claim it (queued -> sending, ``attempts + 1``), commit, and only then
say DATA; afterwards write the outcome. (A reserved copy's session, MAIL and RCPT
go out while the commit that starts it is being written: none of them can hand a
message over, and DATA waits for that commit; see ``_deliver``.) A crash between the
claim and the outcome leaves the copy in ``sending``, and a later worker marks it
``unknown``: it may or may not have reached the server, so it is never resent
without the user's say (``MessageService.retry_unknown``). That is how "at most
once per recipient per send request" survives a crash.

A worker keeps up to ``SEND_CONCURRENCY`` SMTP transactions (lanes) going. A
copy is marked ``sending`` only for a lane that starts its transaction right
away, never ahead, so after a crash of the worker exactly the copies that were
in flight become ``unknown``. The outcomes of the lanes that finished and the
starts for them share one transaction; lanes that finish while it is being
written share the next: a group commit that grows by itself when commits are
slow. When the send fails with a connection lost after DATA, the worker itself
marks the copy ``unknown`` for the same reason (see ``mailer``).

**Not waiting for the disk per copy (SQLite).** A commit that waits for its
fsync costs about as long as an SMTP transaction to a nearby server, and one
stands between any two copies of a lane. So a worker on SQLite *reserves* the
next few copies ahead (``queue``: still ``queued``, but its own), in a commit
that waits for the disk; starting a reserved copy, and writing outcomes, then
commit without waiting (WAL, ``synchronous=NORMAL``). Such a commit is lost only
if the machine stops, never with the worker's process. A worker's presence file
records the machine's boot, so the worker that finds a dead one's reservations
knows which case it is: same boot, nothing was lost, and a copy still reserved
was never started, so it goes back to the queue; another boot (or no record),
and it may have been started by a commit the crash took, so it becomes
``unknown``. Either way no copy is sent twice. A lost outcome leaves its copy in
``sending``, which turns ``unknown`` in the same way.

**The same on PostgreSQL.** There the commits that do not wait
(``synchronous_commit`` off) are lost only if the database server crashes, which
it can do while the worker lives on. Each worker keeps a row in an unlogged table
that the server's crash recovery empties (``queue``, "Crash markers"): a dead
worker's reservations go back to the queue if its row is there, and become
``unknown`` otherwise. A live worker's rounds change nothing once its row is gone;
it then puts its copies back as it knows them (started ones ``sending``, the
outcomes written since its last commit that waited written again), and writes its
row again.

**Telling a dead worker from a live one.** Every worker holds a lock for as long
as its process lives: on PostgreSQL a session-level advisory lock keyed by its
id, on SQLite (one machine by definition) an ``flock`` on a file next to the
database. The operating system or the database server drops the lock when the
process dies, however it dies. A worker that finds copies in ``sending`` probes
their owners' locks; a lock it can take belongs to a dead worker. Copies
claimed longer ago than ``SEND_LEASE_SECONDS`` (far beyond any SMTP timeout)
count as orphaned too, whatever the lock says. This runs when a worker starts
and every minute after.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.metrics import SENDS
from mailbeacon.kit.netpolicy import mail_server_policy
from mailbeacon.kit.workers import backoff_seconds, wake_from_any_thread
from mailbeacon.mail import queue as send_queue
from mailbeacon.mail.events import DeliveryObserver, MessageDelivered
from mailbeacon.mail.mailer import Delivery, Mailer, Outcome, SmtpMailer, SmtpSettings
from mailbeacon.mail.mime import CopyTemplate, MalformedHeaders, VisibleHeaders
from mailbeacon.mail.queue import ClaimedCopy, Round, SendContext, Settlement
from mailbeacon.models import CopyStatus, Security

log = logging.getLogger(__name__)

RECOVER_EVERY_SECONDS = 60.0
IDLE_CONNECTION_SECONDS = 30.0
STOP_GRACE_SECONDS = 10.0
# Copies reserved ahead per lane, each time the reserve runs low: a commit that waits
# for the disk for every so many copies, and as many copies that turn unknown, not
# queued, if the machine (SQLite) or the database server (PostgreSQL) stops mid-send.
RESERVE_PER_LANE = 4
BACKOFF_CAP_SECONDS = 3600.0
# How long a worker keeps trying to take its lost PostgreSQL presence lock again: another
# worker's recovery probing it holds it until its transaction ends.
RETAKE_LOCK_SECONDS = 2.0
ORPHAN_REPLY = (
    "the worker sending this copy stopped during the SMTP transaction; the server may or "
    "may not have received it, so it is not resent without your say"
)

MailerFactory = Callable[[SmtpSettings], Mailer]


def default_worker_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


def machine_boot_id() -> bytes | None:
    """This boot of the machine (Linux gives each boot a random id); None where unknown."""
    try:
        with open("/proc/sys/kernel/random/boot_id", "rb") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


# ------------------------------------------------------------------ presence


class Presence:
    """Holds "worker X is alive" for this process, and probes it for others.

    On SQLite the lock file also holds the machine's boot id, so that a worker found
    dead can be known to have died in this boot: then none of its commits were lost
    (``commits_survived``), even those that did not wait for the disk.
    """

    def __init__(self, database: Database, worker_id: str) -> None:
        self.database = database
        self.worker_id = worker_id
        self._pg: Connection | None = None
        self._pg_wanted = False  # taken once, so to be taken again whenever it is lost
        self._check_lock = threading.Lock()
        self._file: IO[bytes] | None = None
        path = make_url(database.url).database if database.is_sqlite else None
        self._dir = Path(f"{path}.workers") if path and path != ":memory:" else None
        self._boot = machine_boot_id() if self._dir is not None else None
        # Dead workers (probed by is_alive) that lived in this boot of the machine.
        self.commits_survived: set[str] = set()

    @property
    def vouches_for_commits(self) -> bool:
        """Whether a dead worker's unsynced commits can be vouched for (see the class; on
        PostgreSQL its crash marker does, see ``queue``)."""
        return self._boot is not None or not self.database.is_sqlite

    def _lock_path(self, worker_id: str) -> Path:
        assert self._dir is not None
        return self._dir / (hashlib.sha256(worker_id.encode()).hexdigest()[:32] + ".lock")

    @property
    def held(self) -> bool:
        """False while the PostgreSQL lock, once lost, could not be taken again: others may
        take this worker for dead meanwhile, so it claims and reserves nothing new."""
        return self.database.is_sqlite or self._pg is not None or not self._pg_wanted

    def acquire(self, *, patience: float = 0.0) -> None:
        """Take the lock; on PostgreSQL keep trying for ``patience`` seconds."""
        if self.database.is_sqlite:
            if self._dir is None or self._file is not None:
                return
            import fcntl

            self._dir.mkdir(parents=True, exist_ok=True)
            fh = open(self._lock_path(self.worker_id), "a+b")  # noqa: SIM115 (held for life)
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # An earlier process with this (configured) id left the file: it is dead,
            # and its copies are judged by the boot it lived in (see _recover_orphans).
            fh.seek(0)
            if self._boot is not None and fh.read() == self._boot:
                self.commits_survived.add(self.worker_id)
            fh.truncate(0)
            if self._boot is not None:
                fh.write(self._boot)
                fh.flush()
            self._file = fh
        else:
            if self._pg is not None:
                return
            conn = self.database.engine.connect()
            deadline = time.monotonic() + patience
            try:
                while not send_queue.hold_presence_lock(conn, self.worker_id):
                    if time.monotonic() >= deadline:
                        raise RuntimeError(f"another live worker uses the id {self.worker_id!r}")
                    conn.rollback()
                    time.sleep(0.05)
            except BaseException:
                conn.close()
                raise
            conn.commit()  # the lock is session-level; it outlives the transaction
            self._pg = conn
            self._pg_wanted = True

    def release(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._lock_path(self.worker_id).unlink()
            self._file.close()
            self._file = None
        self._pg_wanted = False
        if self._pg is not None:
            # Invalidate rather than return to the pool: a pooled connection would
            # keep the lock, and the worker would look alive forever.
            with contextlib.suppress(SQLAlchemyError):
                self._pg.invalidate()
            self._pg.close()
            self._pg = None

    def check(self) -> None:
        """Re-take the PostgreSQL lock if its connection was lost (database restart,
        terminated session, network); without it the worker looks dead to others.

        Raises if it cannot be taken yet (the server is away, or still holds the lost
        session's lock); a later call tries again.
        """
        # Called from the poll loop and from the pass's database thread.
        with self._check_lock:
            self._check()

    def _check(self) -> None:
        if self._pg is None:
            if self._pg_wanted:
                self.acquire(patience=RETAKE_LOCK_SECONDS)
            return
        try:
            self._pg.exec_driver_sql("SELECT 1")
            self._pg.commit()
        except SQLAlchemyError:
            log.warning("presence connection lost; taking the worker lock again")
            with contextlib.suppress(SQLAlchemyError):
                self._pg.invalidate()
            self._pg.close()
            self._pg = None
            self.acquire(patience=RETAKE_LOCK_SECONDS)

    def is_alive(self, conn: Connection, worker_id: str) -> bool:
        """Whether the worker with that id still runs. ``conn`` must be inside a transaction."""
        if worker_id == self.worker_id:
            return True
        if not self.database.is_sqlite:
            return not send_queue.presence_lock_is_free(conn, worker_id)
        if self._dir is None:
            return True  # nothing to probe: only the lease can tell
        import fcntl

        path = self._lock_path(worker_id)
        try:
            fh = open(path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            return False
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            if self._boot is not None and fh.read() == self._boot:
                self.commits_survived.add(worker_id)
            with contextlib.suppress(OSError):
                path.unlink()
            return False


# ------------------------------------------------------------------ connections


class MailerPool:
    """Kept-open SMTP sessions per mailbox settings; at most one per lane in use."""

    def __init__(self, factory: MailerFactory) -> None:
        self._factory = factory
        self._idle: dict[SmtpSettings, list[tuple[Mailer, float]]] = {}

    def take(self, settings: SmtpSettings) -> Mailer:
        idle = self._idle.get(settings)
        if idle:
            return idle.pop()[0]
        return self._factory(settings)

    def give_back(self, settings: SmtpSettings, mailer: Mailer) -> None:
        self._idle.setdefault(settings, []).append((mailer, time.monotonic()))

    async def close_idle(self, older_than: float = 0.0) -> None:
        cutoff = time.monotonic() - older_than
        closing: list[Mailer] = []
        for settings, idle in list(self._idle.items()):
            keep = [(m, t) for m, t in idle if t > cutoff]
            closing.extend(m for m, t in idle if t <= cutoff)
            if keep:
                self._idle[settings] = keep
            else:
                del self._idle[settings]
        await asyncio.gather(*(m.close() for m in closing), return_exceptions=True)


# ------------------------------------------------------------------ the worker


@dataclass
class _Plan:
    """A message as the worker sends it: envelope sender, SMTP settings, MIME templates."""

    context: SendContext
    smtp: SmtpSettings | None
    problem: str  # why the message cannot be sent at all, if it cannot
    templates: dict[bool, CopyTemplate] = field(default_factory=dict)

    def needs_template(self, copy: ClaimedCopy) -> bool:
        return (copy.html_body is not None) not in self.templates

    def render(self, copy: ClaimedCopy) -> bytes:
        has_html = copy.html_body is not None
        template = self.templates.get(has_html)
        if template is None:
            c = self.context
            headers = VisibleHeaders(
                sender_name=c.sender_name,
                sender_address=c.sender_address,
                to=c.to_header,
                cc=c.cc_header,
                subject=c.subject,
                date=c.created_at,
                message_id=c.message_id_header,
            )
            template = self.templates[has_html] = CopyTemplate.build(
                headers, has_html=has_html, attachments=c.attachments
            )
        return template.render(html=copy.html_body, text=copy.text_body)


class OutboxWorker:
    """Delivers every due copy; runs inside ``serve`` and as ``mailbeacon worker``.

    Database work runs in a thread: inside ``serve`` the event loop also answers the
    tracking edge, which must never wait on a commit, and even in a worker of its
    own a commit waiting on a slow disk would otherwise hold up every SMTP session.
    """

    def __init__(
        self,
        database: Database,
        settings: Settings,
        credentials: CredentialBox,
        *,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
        concurrency: int | None = None,
        mailer_factory: MailerFactory = SmtpMailer,
        delivery_observers: Sequence[DeliveryObserver] = (),
    ) -> None:
        self.database = database
        # Told how each send request settled, in the transaction that closes it (webhooks).
        self.delivery_observers = list(delivery_observers)
        self.worker_id = (worker_id or default_worker_id())[:100]
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency or settings.SEND_CONCURRENCY
        self.max_attempts = settings.SEND_MAX_ATTEMPTS
        self.backoff_seconds = settings.SEND_BACKOFF_SECONDS
        self.lease_seconds = settings.SEND_LEASE_SECONDS
        self.smtp_timeout = settings.SEND_TIMEOUT_SECONDS
        # Where a mailbox's SMTP server may be (kit/netpolicy.py); checked per connection.
        self.server_policy = mail_server_policy(settings)
        self.demo_policy = mail_server_policy(settings, demo=True)
        self.presence = Presence(database, self.worker_id)
        self.reserve_ahead = (
            RESERVE_PER_LANE * self.concurrency if self.presence.vouches_for_commits else 0
        )
        self.pool = MailerPool(mailer_factory)
        self._credentials = credentials
        self._plans: dict[int, _Plan] = {}
        self._drain_lock = asyncio.Lock()
        self._stopping = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        # Copies this worker claimed and knows of: reserved, in flight, or finished and
        # not yet settled. Any other copy under its id is a lost claim.
        self._held: set[int] = set()
        self._reserved: deque[ClaimedCopy] = deque()  # reserved, not started, in order
        # Reserved copies this worker asked to start in a round whose answer was lost: if
        # found `sending`, that round committed and no lane began them (``queue.round``'s
        # ``restart``). Any other copy is started only from `queued`.
        self._start_in_doubt: set[int] = set()
        self._claims_in_doubt = False
        # PostgreSQL (see queue's "Crash markers"): whether this worker's marker is
        # written, and the outcomes written since its last commit that waited for the
        # disk, which a crash of the server may take.
        self._marker_set = False
        self._unsynced: dict[int, Settlement] = {}
        self._resettle = False  # write them again with the next round
        self._abandoned: list[Settlement] = []
        self._queue: send_queue.SendQueue | None = None  # the pass's connection
        self._started: set[int] = set()  # messages whose sent_at this pass has set
        self._touched: set[int] = set()  # messages with copies settled this pass
        self._recovered_own = False
        self.stats = {"sent": 0, "failed": 0, "retried": 0, "unknown": 0}

    # -- lifecycle

    async def start(self) -> None:
        """Take the presence lock, mark dead workers' copies unknown, start polling."""
        if self._task is not None:
            return
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        await asyncio.to_thread(self.presence.acquire)
        await self.recover_orphans()
        self._task = asyncio.create_task(self._poll_loop(), name="mailbeacon-outbox-worker")

    async def stop(self) -> None:
        """Claim nothing more, let in-flight transactions finish (briefly), and stop."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_GRACE_SECONDS)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        # PostgreSQL: outcomes whose commit did not wait for the disk, left by a pass
        # that could not make them durable, are written again if the server lost them
        # (the round repairs first), and flushed.
        if self._abandoned or self._unsynced:
            abandoned, self._abandoned = self._abandoned, []
            try:
                await asyncio.to_thread(self._settle_and_claim, abandoned, 0)
                touched, self._touched = self._touched, set()
                await asyncio.to_thread(self._end_pass, touched)
            except SQLAlchemyError as exc:
                log.warning("the stopping worker could not write its last outcomes: %s", exc)
        await self.pool.close_idle()
        await asyncio.to_thread(self.presence.release)

    def wake(self) -> None:
        """Look for due copies now instead of at the next poll (after a send is planned).

        Safe from any thread: sync request handlers call it from the threadpool, and
        ``asyncio.Event`` may only be touched from its loop's own thread.
        """
        wake_from_any_thread(self._loop, self._wake)

    async def run_once(self) -> int:
        """Deliver every copy due now (retries that fall due meanwhile too); return how many."""
        own_presence = self._task is None
        if own_presence:
            await asyncio.to_thread(self.presence.acquire)
        try:
            await self.recover_orphans()
            handled = await self._drain()
        finally:
            if own_presence:
                await self.pool.close_idle()
                await asyncio.to_thread(self.presence.release)
        return handled

    async def recover_orphans(self) -> int:
        """Mark ``unknown`` the copies left in ``sending`` by dead workers; return how many."""
        count = await asyncio.to_thread(self._recover_orphans)
        if count:
            log.warning("%d copies were left mid-send by a stopped worker: marked unknown", count)
        return count

    # -- the loop

    async def _poll_loop(self) -> None:
        next_recovery = time.monotonic() + RECOVER_EVERY_SECONDS
        while not self._stopping:
            self._wake.clear()
            try:
                if time.monotonic() >= next_recovery:
                    next_recovery = time.monotonic() + RECOVER_EVERY_SECONDS
                    await asyncio.to_thread(self.presence.check)
                    await self.recover_orphans()
                # Reserved copies are not "due" to others: this worker's own leftovers
                # (outcomes it could not write, or not make durable, copies to give
                # back) count too.
                leftovers = bool(self._abandoned or self._reserved or self._unsynced)
                if leftovers or await asyncio.to_thread(self._has_due):
                    await self._drain()
                else:
                    await self.pool.close_idle(IDLE_CONNECTION_SECONDS)
            except Exception:
                log.exception("outbox worker pass failed; trying again shortly")
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _drain(self) -> int:
        async with self._drain_lock:
            try:
                return await self._drain_locked()
            finally:
                self._plans.clear()
                self._started.clear()
                touched, self._touched = self._touched, set()
                try:
                    await asyncio.to_thread(self._end_pass, touched)
                except SQLAlchemyError as exc:
                    # The poll loop runs another pass for what stays unsynced.
                    log.warning("outbox worker could not end its pass: %s", exc)

    async def _drain_locked(self) -> int:
        handled = 0
        in_flight: dict[asyncio.Task[Settlement | None], ClaimedCopy] = {}
        # The gate of each task that began a reserved copy before its start committed.
        gate_of: dict[asyncio.Task[Settlement | None], asyncio.Future[bool]] = {}
        # Outcomes an earlier pass could not write (database away) go first.
        finished, self._abandoned = self._abandoned, []
        reserved = self._reserved
        requeued = False
        dry = False  # the last reservation found fewer due copies than it asked for
        try:
            while True:
                if self._stopping and reserved:
                    finished.extend(self._unreserved(c) for c in reserved)
                    reserved.clear()
                if not (self.presence.held or in_flight):
                    await asyncio.to_thread(self._check_presence)
                # Without its presence lock the worker may be taken for dead, and what it
                # starts then turn unknown: it only settles what it has in flight.
                locked = self.presence.held
                free = 0 if self._stopping or not locked else self.concurrency - len(in_flight)
                start = [reserved.popleft() for _ in range(min(free, len(reserved)))]
                want = free - len(start)
                reserve = 0
                if locked and not (self._stopping or dry) and len(reserved) < self.concurrency:
                    reserve = self.reserve_ahead
                dropped = False  # a reserved copy this round did not start
                if finished or start or want > 0 or reserve:
                    # The reserved copies to start begin their SMTP transactions while
                    # the round commits their starts; DATA waits for it (_deliver).
                    gates: dict[int, asyncio.Future[bool]] = {}
                    for copy in start:
                        if copy.message_id in self._plans:
                            gate = gates[copy.id] = asyncio.get_running_loop().create_future()
                            task = asyncio.create_task(self._deliver(copy, gate))
                            in_flight[task], gate_of[task] = copy, gate
                    try:
                        got = await asyncio.to_thread(
                            self._settle_and_claim, finished, want, start, reserve
                        )
                    except Exception as exc:
                        # None of them hands anything over: back to the reserve, below.
                        for gate in gates.values():
                            gate.set_result(False)
                        # The round may have committed these starts: see _start_in_doubt.
                        self._start_in_doubt.update(c.id for c in start)
                        reserved.extendleft(reversed(start))
                        # The outcomes stay in memory and are written when the database
                        # answers again (by this pass, or the next one); nothing new is
                        # claimed meanwhile. Any other failure ends the pass.
                        sending = len(in_flight) > len(gates)
                        if not sending or not isinstance(exc, SQLAlchemyError):
                            raise
                        log.exception("outbox worker cannot reach the database")
                        await asyncio.sleep(min(self.poll_seconds, 1.0))
                        claimed: list[ClaimedCopy] = []
                    else:
                        handled += len(finished)
                        _count_outcomes(finished)
                        # A copy put back in the queue is claimable only from the next
                        # round on (on PostgreSQL a round is one statement, one snapshot).
                        requeued = any(
                            s.status == CopyStatus.QUEUED and s.started for s in finished
                        )
                        finished = []
                        self._start_in_doubt.difference_update(c.id for c in start)
                        begun = [c for c in start if c.id in got.started]
                        for copy_id, gate in gates.items():
                            gate.set_result(copy_id in got.started)
                        dropped = len(begun) < len(start)
                        claimed = [c for c in begun if c.id not in gates]
                        # A task whose start the round did not make sends nothing more
                        # (it resets its transaction): the copy, claimed again by this
                        # round (its reservation released meanwhile), is begun anew.
                        flying = [
                            c
                            for t, c in in_flight.items()
                            if not (t in gate_of and gate_of[t].done() and not gate_of[t].result())
                        ]
                        claimed += self._take_new(got, flying, finished)
                        dry = dry or len(got.reserved) < reserve
                    for copy in claimed:
                        task = asyncio.create_task(self._deliver(copy))
                        in_flight[task] = copy
                if not in_flight:
                    idle = not reserved or not locked
                    if not finished and idle and not (requeued and want > 0):
                        return handled
                    requeued = False
                    continue
                if dropped and reserved:
                    # Its lane is free: the next reserved copy starts now, not when
                    # another lane finishes.
                    continue
                # Lanes that finish while a round is being written are settled together
                # by the next one: a group commit that needs no waiting on purpose.
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.pop(task)
                    gate_of.pop(task, None)
                    settlement = task.result()
                    if settlement is not None:  # None: a start its round did not make
                        finished.append(settlement)
        except BaseException:
            for task in in_flight:
                task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)
            self._abandoned.extend(finished)
            self._abandoned.extend(self._unreserved(c) for c in reserved)
            reserved.clear()
            raise

    def _take_new(
        self, got: Round, in_flight: Collection[ClaimedCopy], finished: list[Settlement]
    ) -> list[ClaimedCopy]:
        """Queue a round's reservations and return its claims to begin, each copy held
        once: the invariant that keeps a copy from being sent twice by this worker.

        A copy the worker still holds as an entry of its reserve may come back from a
        round: another worker took this one for dead (its presence lock lost) and put
        its reservations back in the queue, or the user queued an ``unknown`` copy again.
        The old entry goes; starting it would find the copy claimed or reserved anew,
        and, were it started, the new one would start it a second time. A copy still in
        flight that comes back (a user's retry while its transaction went on) is not
        begun again: a claim is settled by the lane that has it, a reservation given
        back.
        """
        fresh = {c.id for c in got.claimed} | {c.id for c in got.reserved}
        reserved = self._reserved
        if any(c.id in fresh for c in reserved):
            kept = [c for c in reserved if c.id not in fresh]
            reserved.clear()
            reserved.extend(kept)
        flying = {c.id for c in in_flight}
        for copy in got.reserved:
            if copy.id in flying:
                # Its lane has it started: a start in doubt would let the give-back
                # put a copy in flight back in the queue.
                finished.append(self._unreserved(copy, start_in_doubt=False))
            else:
                reserved.append(copy)
        return [c for c in got.claimed if c.id not in flying]

    def _unreserved(self, copy: ClaimedCopy, *, start_in_doubt: bool | None = None) -> Settlement:
        """A reserved copy the worker gives back unstarted (stopping, or the pass failed)."""
        if start_in_doubt is None:
            start_in_doubt = copy.id in self._start_in_doubt
        return Settlement(
            copy.id,
            copy.message_id,
            CopyStatus.QUEUED,
            "",
            release=True,
            started=False,
            start_in_doubt=start_in_doubt,
        )

    async def _deliver(
        self, copy: ClaimedCopy, gate: asyncio.Future[bool] | None = None
    ) -> Settlement | None:
        """Send one copy; its outcome to write.

        With a ``gate``, the copy is a reserved one whose start the round under way is
        committing: the SMTP session opens and MAIL and RCPT go out meanwhile, and
        DATA waits for the gate (``SmtpMailer.send``). False (the copy did not start,
        or the round failed) ends it with None: nothing was handed over, and the loop
        accounts for the copy (gone, or back in the reserve with its start in doubt).
        """
        outcome = await self._attempt(copy, gate)
        if gate is not None:
            try:
                # Shielded: cancelling this task must not cancel the gate, which only
                # the loop resolves.
                if not await asyncio.shield(gate):
                    return None
            except asyncio.CancelledError:
                if not gate.done():
                    self._abandoned.append(self._unreserved(copy, start_in_doubt=True))
                elif gate.result():
                    # Started, and ended before any DATA: that outcome is written.
                    self._abandoned.append(self._written(copy, outcome))
                raise
        if isinstance(outcome, Settlement):
            self.stats["failed"] += 1  # failed before any SMTP: no mailbox, or bad headers
        return self._written(copy, outcome)

    def _written(self, copy: ClaimedCopy, outcome: Settlement | Delivery | None) -> Settlement:
        """What to write for an attempt whose start committed (so SMTP answered, or it
        failed before any: the mailer returns None only for a gate that said no)."""
        if isinstance(outcome, Settlement):
            return outcome
        assert outcome is not None
        return self._settlement(copy, outcome)

    async def _attempt(
        self, copy: ClaimedCopy, gate: asyncio.Future[bool] | None
    ) -> Settlement | Delivery | None:
        plan = self._plans[copy.message_id]
        if plan.smtp is None:
            return Settlement(copy.id, copy.message_id, CopyStatus.FAILED, plan.problem)
        try:
            if plan.context.attachments and plan.needs_template(copy):
                # Encoding the files takes a while (a third of a second for 20 MB): not on
                # the event loop, which also answers the tracking edge.
                await asyncio.to_thread(plan.render, copy)
            data = plan.render(copy)
        except MalformedHeaders as exc:
            # Never sent, and trying again would build the same bytes: fail it now.
            return Settlement(copy.id, copy.message_id, CopyStatus.FAILED, str(exc))
        mailer = self.pool.take(plan.smtp)
        try:
            delivery = await mailer.send(
                plan.context.sender_address,
                copy.address,
                data,
                None if gate is None else asyncio.shield(gate),
            )
        except asyncio.CancelledError:
            in_data = mailer.in_data_phase
            mailer.abort()
            if gate is not None and not (gate.done() and gate.result()):
                if not gate.done():
                    # Its start may have committed with the round under way; it was
                    # never begun (DATA waits for the gate). The loop holds it nowhere
                    # else: give it back, from `sending` too.
                    self._abandoned.append(self._unreserved(copy, start_in_doubt=True))
                raise
            self._abandoned.append(
                self._settlement(
                    copy,
                    Delivery(
                        Outcome.UNKNOWN if in_data else Outcome.TEMPORARY,
                        "the worker stopped during the SMTP transaction"
                        if in_data
                        else "the worker stopped before sending",
                    ),
                    release=not in_data,
                )
            )
            raise
        except Exception as exc:
            log.exception("sending copy %d failed unexpectedly", copy.id)
            in_data = mailer.in_data_phase
            mailer.abort()
            delivery = Delivery(
                Outcome.UNKNOWN if in_data else Outcome.TEMPORARY, f"internal error: {exc}"
            )
        else:
            self.pool.give_back(plan.smtp, mailer)
        return delivery

    def _settlement(
        self, copy: ClaimedCopy, delivery: Delivery, *, release: bool = False
    ) -> Settlement:
        mid = copy.message_id
        if delivery.outcome == Outcome.SENT:
            self.stats["sent"] += 1
            return Settlement(copy.id, mid, CopyStatus.SENT, delivery.reply)
        if delivery.outcome == Outcome.UNKNOWN:
            self.stats["unknown"] += 1
            return Settlement(copy.id, mid, CopyStatus.UNKNOWN, delivery.reply)
        if delivery.outcome == Outcome.TEMPORARY and (release or copy.attempts < self.max_attempts):
            self.stats["retried"] += 1
            delay = 0.0 if release else self.backoff(copy.attempts)
            return Settlement(
                copy.id,
                mid,
                CopyStatus.QUEUED,
                delivery.reply,
                next_attempt_at=utcnow() + timedelta(seconds=delay),
                release=release,
            )
        self.stats["failed"] += 1
        reply = delivery.reply
        if delivery.outcome == Outcome.TEMPORARY:
            reply = f"gave up after {copy.attempts} attempts; last answer: {reply}"
        return Settlement(copy.id, mid, CopyStatus.FAILED, reply)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try: doubling from the base, capped, with 10% jitter."""
        return backoff_seconds(self.backoff_seconds, attempts, BACKOFF_CAP_SECONDS)

    # -- database work (runs in a thread)

    def _connect(self) -> Any:
        # On SQLite, BEGIN IMMEDIATE takes the write lock first: a transaction that
        # reads then writes never hits SQLITE_BUSY on a lock upgrade (the option is
        # ignored by PostgreSQL). SendQueue.round begins its own the same way.
        return self.database.engine.connect().execution_options(sqlite_immediate=True)

    def _has_due(self) -> bool:
        with self.database.engine.connect() as conn:
            return send_queue.has_due_copies(conn, utcnow())

    def _settle_and_claim(
        self,
        settlements: list[Settlement],
        want: int,
        start: Sequence[ClaimedCopy] = (),
        reserve: int = 0,
    ) -> Round:
        """One transaction: the outcomes of finished copies, starts and claims for the
        free lanes, and reservations for the lanes' next copies."""
        # One connection for the whole pass: no pool checkout (nor PostgreSQL's
        # pre-ping) per round.
        if self._queue is None:
            conn = self._connect()
            if not self.database.is_sqlite:
                # Each round is one statement on PostgreSQL: autocommit makes it one
                # round trip (SQLAlchemy restores the mode when the connection returns
                # to the pool).
                conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            self._queue = send_queue.SendQueue(conn)
        queue = self._queue
        try:
            if self._claims_in_doubt:
                # A round that failed may have committed its claims (on PostgreSQL a
                # round is one autocommitted statement, and the context query that
                # follows can fail on its own). Those copies were never started: put
                # them back. On PostgreSQL the server may also have crashed: the repair
                # covers both.
                if self.database.is_sqlite:
                    send_queue.requeue_lost_claims(queue.conn, self.worker_id, self._held)
                else:
                    self._repair(settlements, start)
                self._claims_in_doubt = False
            for _ in range(3):
                got = queue.round(
                    self.worker_id,
                    utcnow(),
                    [*settlements, *self._unsynced.values()] if self._resettle else settlements,
                    want,
                    messages_started=self._started,
                    known_messages=self._plans,
                    start=[c.id for c in start],
                    restart=self._start_in_doubt,
                    reserve=reserve,
                    establish=not self._marker_set,
                )
                if not got.marker_missing:
                    break
                # The server crashed since this worker wrote its marker (or a worker took
                # it for dead): its commits since may be gone. Nothing was written.
                log.warning("the database server lost this worker's recent commits; repairing")
                self._repair(settlements, start)
            else:
                raise send_queue.CrashMarkerLost("the worker's crash marker keeps disappearing")
            # Before the worker's state takes the round in: should a plan fail (a stored
            # setting it cannot read), the round is one whose answer was lost, and its
            # claims and reservations are put back by the next round's repair.
            plans = {mid: self._plan(context) for mid, context in got.contexts.items()}
        except Exception:
            # Whatever failed, the round may have committed: claims and reservations
            # this worker does not hold would stay under its id for as long as it lives.
            self._claims_in_doubt = True
            self._queue = None
            with contextlib.suppress(SQLAlchemyError):
                queue.conn.invalidate()
            queue.conn.close()
            # What lost this connection (a restart of the server, a network failure)
            # may have taken the presence lock's too: without it this worker looks dead,
            # and another one's recovery would mark its copies unknown.
            self._check_presence()
            raise
        if not self.database.is_sqlite:
            self._marker_set = True
            written = [s for s in settlements if s.started]
            if self._resettle:
                written.extend(self._unsynced.values())
                self._touched.update(s.message_id for s in self._unsynced.values())
                self._resettle = False
            if got.flushed:
                self._unsynced.clear()
            else:
                # Written by a commit that did not wait for the disk: kept until one
                # that did, to be written again if the server loses them.
                self._unsynced.update((s.copy_id, s) for s in written)
        self._start_in_doubt.difference_update(s.copy_id for s in settlements)
        self._held.difference_update(s.copy_id for s in settlements)
        # A reserved copy that did not start is gone (its message was deleted).
        self._held.difference_update(c.id for c in start if c.id not in got.started)
        self._held.update(c.id for c in got.claimed)
        self._held.update(c.id for c in got.reserved)
        self._touched.update(s.message_id for s in settlements)
        self._plans.update(plans)
        return got

    def _repair(self, settlements: Sequence[Settlement], start: Sequence[ClaimedCopy]) -> None:
        """PostgreSQL: make this worker's copies agree with what it knows, in a commit
        that waits for the disk and writes its crash marker (``queue.repair_own_copies``).

        The outcomes written since its last commit that waited may have been lost with
        the server: they are written again by the next round (``_resettle``).
        """
        # A crash of the server (or of the network) that took the marker or the round's
        # answer may have taken the presence lock's session too: re-take it first, or
        # this worker looks dead to the others meanwhile.
        self._check_presence()
        unstarted = {c.id for c in self._reserved} | {c.id for c in start}
        unstarted |= {s.copy_id for s in settlements if not s.started}
        started = (self._held - unstarted) | set(self._unsynced)
        with self._connect() as conn, conn.begin():
            # The default may be not to wait (the rounds set their own): this commit
            # must, as the marker it writes vouches for what it repaired.
            send_queue.wait_for_the_disk(conn)
            count = send_queue.repair_own_copies(
                conn, self.worker_id, unstarted=unstarted, started=started
            )
        if count:
            log.warning("%d copies claimed by a round whose answer was lost: queued again", count)
        self._marker_set = True
        self._resettle = bool(self._unsynced)
        # A lost outcome may have taken its message's first sent_at with it.
        self._started.clear()

    def _check_presence(self) -> None:
        try:
            self.presence.check()
        except (SQLAlchemyError, RuntimeError) as exc:
            log.warning("cannot take the worker lock again yet: %s", exc)

    def _end_pass(self, touched: set[int]) -> None:
        """Close the send requests the pass finished, make the outcomes it wrote durable,
        and give the connection back; once committed, say which messages are delivered
        (``MessageDelivered``).

        If the worker's crash marker is gone by then, those outcomes stay to be written
        again: the poll loop runs a pass for them, whose round repairs first.
        """
        queue, self._queue = self._queue, None
        if queue is not None:
            queue.conn.close()
        completed: list[int] = []
        # PostgreSQL: outcomes written by commits that did not wait for the disk are
        # flushed now, not left for a crash of the server to take while this worker,
        # idle, would not notice (its marker gone, nothing written again).
        flush = bool(self._unsynced) and not self.database.is_sqlite
        flushed = False
        if touched or flush:
            # A connection of its own: the pass's one runs in autocommit on PostgreSQL,
            # and closing a request and queueing its Sent copy must commit together.
            with self._connect() as conn, conn.begin():
                completed = send_queue.complete_outbox_entries(
                    conn, touched, utcnow(), self.delivery_observers
                )
                if flush:
                    flushed = send_queue.flush_own_commits(conn, self.worker_id)
        if flushed:
            self._unsynced.clear()
        if completed:
            self.database.dispatch([MessageDelivered(message_id) for message_id in completed])

    def _plan(self, context: SendContext) -> _Plan:
        if context.mailbox_id is None:
            return _Plan(
                context, None, "the mailbox this email was sent from is no longer connected"
            )
        try:
            password = self._credentials.open(context.smtp_password_encrypted)
        except ValueError as exc:
            return _Plan(context, None, str(exc))
        smtp = SmtpSettings(
            host=context.smtp_host,
            port=context.smtp_port,
            security=Security(context.smtp_security),
            username=context.smtp_username,
            password=password,
            timeout=self.smtp_timeout,
            policy=self.demo_policy if context.is_demo else self.server_policy,
        )
        return _Plan(context, smtp, "")

    def _recover_orphans(self) -> int:
        now = utcnow()
        with self._connect() as conn, conn.begin():
            owners = send_queue.sending_workers(conn, exclude=self.worker_id)
            if not self.database.is_sqlite:
                # Dead workers' markers go too, copies or not.
                owners = sorted({*owners, *send_queue.marked_workers(conn, self.worker_id)})
            dead = [w for w in owners if not self.presence.is_alive(conn, w)]
            if not self._recovered_own:
                # Copies under our own id before we claimed anything come from an
                # earlier process that used the same (configured) worker id.
                dead.append(self.worker_id)
            if self.database.is_sqlite:
                survived: Collection[str] = self.presence.commits_survived
            else:
                survived = send_queue.crash_markers_of(conn, dead)
            count = send_queue.mark_orphans_unknown(
                conn,
                dead,
                send_queue.lease_cutoff(now, self.lease_seconds),
                now,
                ORPHAN_REPLY,
                self.delivery_observers,
                commits_survived=survived,
            )
            if not self.database.is_sqlite:
                # A marker is judged once: a later process with the same id writes its own.
                send_queue.drop_crash_markers(conn, dead)
                if self.worker_id in dead:
                    self._marker_set = False
        self._recovered_own = True
        if count:
            SENDS.labels("unknown").inc(count)
        return count


_OUTCOMES = {
    CopyStatus.SENT: "sent",
    CopyStatus.FAILED: "failed",
    CopyStatus.UNKNOWN: "unknown",
    CopyStatus.QUEUED: "retry",
}
# The counter's children, looked up once (``labels()`` costs a lock and a dict per call).
_SENDS_BY_STATUS = {status: SENDS.labels(name) for status, name in _OUTCOMES.items()}


def _count_outcomes(settlements: Sequence[Settlement]) -> None:
    """Count written outcomes; a copy given back untried (worker stopping) was no attempt."""
    for settlement in settlements:
        if not settlement.release:
            _SENDS_BY_STATUS[settlement.status].inc()
