"""Journal-first ingest: the edge answers once a hit is on local disk; a consumer stores it.

:meth:`Ingest.record` appends the hit to this process's journal segment
(``journal.py``: group commit, one ``write`` + ``fdatasync`` per batch) and
returns once it is durable. The database plays no part in that answer, so an
outage, a migration or a slow commit never reaches the edge.

The consumer (a thread of ``serve``, or ``mailbeacon ingest`` on its own) moves
journal records into the database in large batches through the hit pipeline,
checkpoints its position, and deletes consumed segments. Any number of
consumers in any processes share one journal folder: each segment is read by
one of them at a time (``flock``). Delivery is at least once (a consumer that
dies after its commit but before its checkpoint delivers those hits again), and
the pipeline skips hits whose uid is stored already, so each hit is stored
exactly once. While the database is away the consumer fails its pass, moves no
checkpoint and tries again later; the hits wait in the journal. A hit the
database refuses for another reason is set aside in ``rejected.hits`` (JSON
lines, in the journal folder) so that it cannot hold back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mailbeacon.db import is_unreachable
from mailbeacon.kit.metrics import IngestLag
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalConsumer, JournalWriter, journal_backlog

log = logging.getLogger(__name__)

StoreBatch = Callable[[list[Hit]], BatchResult]

# Not a segment suffix: no consumer ever picks it up.
REJECTED_FILE = "rejected.hits"
# How often an idle consumer looks for segments other processes wrote (its own
# process's appends wake it at once). Live updates reach the Mail tab within a
# second of the edge's answer when the consumer runs in another process.
POLL_SECONDS = 0.2
# How long a woken consumer lets more hits arrive before its pass.
GATHER_SECONDS = 0.05
# The interpreter's thread switch interval while a consumer runs in the process.
SWITCH_INTERVAL_SECONDS = 0.0005
# Added to the consumer thread's niceness.
CONSUMER_NICENESS = 10
# Versions before the journal spooled hits here as JSON lines while the database was away.
_LEGACY_SUFFIXES = (".jsonl", ".replaying")


class Ingest:
    """This process's journal writer, and (with ``consume``) a consumer thread.

    ``store`` writes a batch to the database and must skip hits whose uid is
    stored already (``HitPipeline.process(..., replay=True)``).
    """

    def __init__(
        self,
        directory: Path,
        store: StoreBatch,
        *,
        consume: bool = True,
        batch_size: int = 5000,
        retry_seconds: float = 1.0,
        poll_seconds: float = POLL_SECONDS,
        gather_seconds: float = GATHER_SECONDS,
        segment_bytes: int = 64 << 20,
        segment_seconds: float = 2.0,
        database_ready: Callable[[], bool] = lambda: True,
        legacy_spool: Path | None = None,
    ) -> None:
        self.directory = directory
        self._store = store
        self._consume = consume
        self._retry_seconds = retry_seconds
        self._poll_seconds = poll_seconds
        self._gather_seconds = gather_seconds
        self._segment_bytes = segment_bytes
        self._segment_seconds = segment_seconds
        # Until the database is reachable *and migrated* the consumer leaves the
        # journal alone: an old schema would refuse hits as if they were bad.
        self._database_ready = database_ready
        self._legacy_spool = legacy_spool
        self.consumer = JournalConsumer(directory, self._store_isolating, batch_size=batch_size)
        self._writer: JournalWriter | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        # Passes of the consumer thread, for settle(): a waiter is released by the
        # first pass that began after it asked and went through without failing.
        self._lock = threading.Lock()
        self._passes_started = 0
        self._waiters: list[tuple[int, asyncio.Future[bool]]] = []
        self.database_up = True
        self.stats = {"stored": 0, "duplicates": 0, "rejected": 0, "failed_passes": 0}

    @property
    def writer(self) -> JournalWriter | None:
        return self._writer

    async def start(self) -> None:
        """Open this process's journal, take over a legacy spool, start the consumer."""
        if self._writer is not None:
            return
        await asyncio.to_thread(self.directory.mkdir, mode=0o700, parents=True, exist_ok=True)
        self._writer = JournalWriter(
            self.directory,
            max_segment_bytes=self._segment_bytes,
            max_segment_age=self._segment_seconds,
        )
        if self._legacy_spool is not None:
            await asyncio.to_thread(import_legacy_spool, self._legacy_spool, self._writer)
        # Every answer of the edge waits for the journal's writer thread to take the
        # interpreter lock back from a busy event loop once its fdatasync returns, and
        # the consumer thread (CPU-bound: decoding, classifying, building rows) shares
        # it too. At the default 5 ms switch interval each such hand-off can add 5 ms:
        # with no consumer thread at all, a loaded edge answered a third fewer hits.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_SECONDS))
        if self._consume:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="mailbeacon-journal-consumer", daemon=True
            )
            self._thread.start()

    async def stop(self) -> None:
        """Close the journal (every acknowledged hit is on disk already), then store what
        it holds if the database answers; what it cannot store waits for the next start."""
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.aclose()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stop.set()
            self._wake.set()
            await asyncio.to_thread(thread.join)
            if self._database_ready():
                try:
                    await asyncio.to_thread(self.consume_once)
                except Exception as exc:
                    log.warning("hits left in the journal for the next start: %s", _first(exc))
        self._release_waiters(None)

    async def record(self, hit: Hit) -> None:
        """Append a hit to the journal; returns once it is durable (fdatasync'd)."""
        writer = self._writer
        if writer is None:
            raise RuntimeError("ingest is not running")
        await writer.append(hit)
        # Event.set takes a lock and notifies on every call: only the first hit of a
        # pass needs to wake the consumer.
        if not self._wake.is_set():
            self._wake.set()

    async def settle(self, wait_seconds: float = 30.0) -> bool:
        """Wait until the consumer has stored every hit acknowledged before this call.

        True once a consumer pass that began after the call has gone through; False
        if there is no consumer thread, it stops first, or ``wait_seconds`` pass.
        """
        if self._thread is None:
            return False
        fut: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._lock:
            self._waiters.append((self._passes_started + 1, fut))
        self._wake.set()
        try:
            return await asyncio.wait_for(fut, wait_seconds)
        except TimeoutError:
            return False

    def lag(self) -> IngestLag:
        """Hits acknowledged on this node (its journal folder) and not yet stored, and
        how long the oldest has waited (for the metrics)."""
        records, oldest = journal_backlog(self.directory)
        return IngestLag(records, max(0.0, time.time() - oldest) if records else 0.0)

    def consume_once(self) -> int:
        """One consumer pass: store every hit durable now in segments nobody else holds.

        Returns the hits handed to the database (duplicates included); raises when
        the database cannot be reached, leaving the journal as it was.
        """
        delivered = self.consumer.consume_available()
        if delivered and not self.database_up:
            log.warning("the database is back: the journal is being stored")
            self.database_up = True
        return delivered

    def _run(self) -> None:
        """The consumer thread: a pass whenever hits arrive (or every poll), until stopped."""
        # Where cores are scarce the edge's event loop goes first: it answers people,
        # the consumer only has to keep up on average (Linux nices threads one by one).
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), CONSUMER_NICENESS)
        while not self._stop.is_set():
            if not self._database_ready():
                self._stop.wait(self._retry_seconds)
                continue
            # Cleared before the pass: a hit acknowledged during it sets the event
            # again, and the next pass starts at once.
            self._wake.clear()
            with self._lock:
                self._passes_started += 1
                number = self._passes_started
            try:
                delivered = self.consume_once()
            except Exception as exc:
                self._failed(exc)
                self._stop.wait(self._retry_seconds)
                continue
            self._release_waiters(number)
            if delivered >= self.consumer.batch_size:
                continue  # a backlog: the next batch at once
            if not delivered:
                self._wake.wait(self._poll_seconds)
            # Let hits gather for a moment: a pass per hit would spend the process's
            # time on transactions and checkpoints of one hit each, under the edge's
            # feet. Nobody waits that long for the Mail tab; a settle() does not wait.
            with self._lock:
                waited_for = bool(self._waiters)
            if not waited_for:
                self._stop.wait(self._gather_seconds)

    def _failed(self, exc: Exception) -> None:
        self.stats["failed_passes"] += 1
        if not is_unreachable(exc):
            log.exception("journal consumer pass failed; retrying")
        elif self.database_up:
            self.database_up = False
            log.warning(
                "the database is unavailable (%s); hits wait in the journal until it is back",
                _first(exc),
            )

    def _release_waiters(self, number: int | None) -> None:
        with self._lock:
            if number is None:
                due, self._waiters = self._waiters, []
            else:
                due = [w for w in self._waiters if w[0] <= number]
                self._waiters = [w for w in self._waiters if w[0] > number]
        for _, fut in due:
            try:
                fut.get_loop().call_soon_threadsafe(_resolve, fut, number is not None)
            except RuntimeError:  # that loop is closed: nobody waits any more
                continue

    def _store_isolating(self, hits: list[Hit]) -> None:
        """Store a batch; if the database refuses it for a reason other than being away,
        store the hits one by one and set aside only those it still refuses.

        Raises only when the database cannot be reached (or the refused hits cannot
        be set aside), so that the consumer keeps its position and tries again.
        """
        try:
            self._count(self._store(hits))
            return
        except Exception as exc:
            if is_unreachable(exc):
                raise
            log.exception("a batch of %d hits was refused; storing them one by one", len(hits))
        refused: list[Hit] = []
        for hit in hits:
            try:
                self._count(self._store([hit]))
            except Exception as exc:
                if is_unreachable(exc):
                    raise
                refused.append(hit)
        if refused:
            set_aside(self.directory, refused, "refused by the database")
            self.stats["rejected"] += len(refused)

    def _count(self, result: BatchResult) -> None:
        self.stats["stored"] += result.written + result.anonymous
        self.stats["duplicates"] += result.skipped_duplicates


def _resolve(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _first(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def set_aside(directory: Path, hits: list[Hit], reason: str) -> None:
    """Keep hits the database refused (not for being away) for an operator, durably."""
    log.error("setting %d hit(s) aside in %s: %s", len(hits), REJECTED_FILE, reason)
    _append_lines(directory / REJECTED_FILE, [{"reason": reason, "hit": h.to_json()} for h in hits])


def _append_lines(path: Path, items: list[dict[str, str]]) -> None:
    data = "".join(json.dumps(item) + "\n" for item in items).encode()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def import_legacy_spool(spool: Path, writer: JournalWriter) -> int:
    """Move hits an earlier version spooled (JSON lines) into the journal; returns how many.

    Each file is taken under the lock its writers and replayers used, appended to
    the journal durably, and only then removed. A crash in between imports the
    file again; the consumer skips the uids stored already.
    """
    if not spool.is_dir():
        return 0
    moved = 0
    for path in sorted(spool.iterdir()):
        if path.suffix not in _LEGACY_SUFFIXES:
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # another process is importing it
            if os.fstat(fd).st_nlink == 0:
                continue  # another process imported it while we opened it
            with os.fdopen(os.dup(fd), "r", encoding="utf-8") as fh:
                lines = fh.read().split("\n")
            hits: list[Hit] = []
            unreadable: list[dict[str, str]] = []
            # The last element is the unterminated tail: a write cut short by a
            # crash, which was never acknowledged.
            for line in lines[:-1]:
                if not line:
                    continue
                try:
                    hits.append(Hit.from_json(line))
                except (ValueError, TypeError):
                    unreadable.append({"reason": "unreadable spool line", "hit": line})
            if unreadable:
                _append_lines(spool / REJECTED_FILE, unreadable)
            writer.append_many(hits)
            path.unlink(missing_ok=True)
            moved += len(hits)
        finally:
            os.close(fd)
    if moved:
        log.warning("moved %d hits from the old spool (%s) into the journal", moved, spool)
    return moved
