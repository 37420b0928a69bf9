"""The hit journal: a local append-only log the edge answers from, drained into the database.

Each process of the edge owns one :class:`JournalWriter`. ``await
writer.append(hit)`` returns once the hit's record is on disk (``write`` then
``fdatasync``). A background thread does the writing with group commit: every
record that arrives while one ``fdatasync`` runs goes into the next single
``write`` + ``fdatasync``, so the disk is flushed once per batch, not per hit.
:class:`JournalConsumer` (any number of them, in any processes) claims
segments under a lock, hands their hits in large batches to a ``store``
callback, checkpoints its position durably and deletes what it has consumed.
Delivery is at least once: a consumer that dies between ``store`` and its
checkpoint leaves those records to be delivered again, so ``store`` must be
idempotent by hit uid.

Journal format, version 1
=========================

All integers are little-endian. Only local filesystems: the protocol relies on
``flock`` and on ``rename`` being atomic.

Files (one flat directory per node)
-----------------------------------
``<stem>.seg``
    A segment: a header, then records, appended by one writer only.
``<stem>.new``
    A segment being created; renamed to ``.seg`` once its header is written.
    An unlocked ``.new`` is left over from a writer that died while creating
    it, and holds no acknowledged record (records are only written to ``.seg``).
``<stem>.durable``
    The writer's published durable length of its open segment, so a consumer
    can follow a live segment without reading past what ``fdatasync`` covered.
``<stem>.pos``
    The consumers' claim lock and checkpoint for that segment.
``damaged/``
    Copies of byte ranges a consumer skipped as damaged, for an operator.

``stem`` is ``{creation time in ns, 20 digits}-{pid}-{8 random hex}-{sequence,
6 digits}``: names sort by creation, say which process wrote them, and stay
unique across restarts and pid reuse.

Segment header (16 bytes)
-------------------------
=====  ====  ==========================================
0      8     magic ``b"MBJOURNL"``
8      2     u16 format version (1)
10     2     u16 header length (16)
12     4     u32 CRC-32 of bytes 0..11
=====  ====  ==========================================

Record frame
------------
=====  ====  ==========================================
0      4     marker ``b"\\xfbMBR"`` (0xFB never occurs in UTF-8)
4      4     u32 payload length L, 1 <= L <= 65536
8      4     u32 CRC-32 (zlib, IEEE 802.3) of the payload
12     L     payload; its first byte is the record type
=====  ====  ==========================================

A frame is valid only if the marker, the length bound and the CRC all hold.
After an invalid frame a reader resynchronises on the next offset where a
valid frame starts (a false start needs both a marker and a matching CRC).

Hit record, type 1 (payload)
----------------------------
=====  ====  ==========================================
0      1     u8 record type (1)
1      1     u8 flags: 1 kind is "click" (else "open"), 2 is_head,
             4 link_position present, 8 ip_prefix present, 16 network
             present, 32 prefetch_hint present, 64 viewer_user_id present
2      16    uid: the 32 lowercase hex characters as 16 bytes
18     8     f64 occurred_at (Unix seconds)
26     8     i64 copy_id
34     8     i64 link_position (0 if absent)
42     8     i64 viewer_user_id (0 if absent)
50     8     4 x u16 UTF-8 byte lengths of user_agent, ip_prefix, network,
             prefetch_hint (0 if absent)
58     ...   the four strings, in that order
=====  ====  ==========================================

The payload length must be exactly 58 plus the four string lengths. A newer
format adds record types (or a new header version); a consumer that meets a
type or version it does not know stops at it and leaves the segment for a
newer consumer, since skipping would lose hits.

``.durable`` (16 bytes)
-----------------------
u64 length, u64 length XOR 2**64-1. Rewritten with ``pwrite`` after every
``fdatasync`` and never synced itself: it only matters while the writer lives.

``.pos`` (checkpoint, two slots at offsets 0 and 512)
-----------------------------------------------------
Each slot: magic ``b"MBJCKPT1"``, u64 sequence, u64 offset of the first
unconsumed byte, u32 CRC-32 of the preceding 24 bytes. A checkpoint writes
the older slot and ``fdatasync``s, so a torn write leaves the previous one
readable; the valid slot with the higher sequence wins, none means offset 16.

Locks and lifecycle
-------------------
* A writer holds ``flock(LOCK_EX)`` on its open segment from its creation as
  ``.new`` until it closes it (rotation by size or age, ``close()``, or its
  death). So a segment on which ``LOCK_SH`` can be taken will never grow again.
* The writer creates ``.new``, writes the header, creates ``.durable``,
  renames to ``.seg`` and fsyncs the directory before the segment's first
  records are written: a record is never acknowledged in a file whose name
  could vanish in a crash.
* A consumer takes ``flock(LOCK_EX | LOCK_NB)`` on ``.pos`` (created if
  missing) and keeps it while it reads, stores and checkpoints; another
  consumer skips a segment it cannot lock.
* The writer grows a segment's file ahead of its records by writing zeros,
  and cuts it to its last record when it closes it (the cut is not synced).
* A live segment is read up to its ``.durable`` length; its records are
  complete there, so any invalid byte before it is damage. A closed segment is
  read to its end; invalid bytes with no valid record after them are a torn
  tail (a write cut short by a crash, never acknowledged, or the zeros a crash
  left past the records) and are ignored. So are zeros before a valid record
  past the length the writer last published (a torn write: after a power
  loss, a later block of a batch written into the zeros may be on disk and an
  earlier one not; none of it was acknowledged).
* A closed segment read to its end is deleted (``.seg``, then ``.durable``,
  then ``.pos``) under its lock, without a last checkpoint: if the deletion is
  lost in a crash, the segment is delivered again from the last checkpoint.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import fcntl
import logging
import os
import secrets
import struct
import threading
import time
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Literal, TypeAlias

from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal_records import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAX_PAYLOAD,
    Scan,
    decode_records,
    encode_hit,
    find_record,
    read_segment_header,
    segment_header,
)

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".seg"
_CREATING_SUFFIX = ".new"
_DURABLE_SUFFIX = ".durable"
_POSITION_SUFFIX = ".pos"
DAMAGED_DIRECTORY = "damaged"

_DURABLE = struct.Struct("<QQ")
_ALL_ONES = (1 << 64) - 1
_CHECKPOINT = struct.Struct("<8sQQI")
_CHECKPOINT_MAGIC = b"MBJCKPT1"
_CHECKPOINT_SLOT = 512
# Larger than the largest frame, so a window always holds at least one whole
# record when one is there to read.
_WINDOW = 1 << 20
assert _WINDOW > 2 * MAX_PAYLOAD
_DAMAGED_COPY_MAX = 16 << 20
# A writer creates a segment and locks it a moment later: an unlocked ``.new``
# younger than this may be one in between, not one whose writer died.
_CREATING_GRACE_SECONDS = 30.0

_datasync: Callable[[int], None] = getattr(os, "fdatasync", os.fsync)

Waiter: TypeAlias = asyncio.Future[None] | concurrent.futures.Future[None]


class JournalClosed(RuntimeError):
    """The writer was closed; nothing more can be appended."""


_writers: weakref.WeakSet[JournalWriter] = weakref.WeakSet()


def _disown_after_fork() -> None:
    """In a forked child, let go of the parent's writers.

    The child shares the open segment's file description, and with it the
    flock: kept open, it would make a segment look live for as long as the
    child runs. The writer thread does not exist in the child either.
    """
    for writer in list(_writers):
        writer._forked = True
        for fd in (writer._fd, writer._durable_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        writer._fd = writer._durable_fd = -1


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_disown_after_fork)


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    """os.write may write less than asked (a full disk): write the rest or raise.

    At ``offset`` if one is given (``pwrite``), else at the file's position.
    """
    view = memoryview(data)
    while view:
        written = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("the journal segment accepted no more bytes")
        view = view[written:]
        if offset is not None:
            offset += written


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _settle_async(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for fut in futures:
        if fut.done():  # the appender was cancelled (its client went away)
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


# When the last batch held at least BUSY_BATCH appends, the writer waits this long
# before taking the next one (see JournalWriter._run).
BUSY_DELAY_SECONDS = 0.0003
BUSY_BATCH = 8

# A segment's file is grown ahead of its records by writing zeros, first this much,
# then twice what it holds, at most _GROW_MAX at a time. An fdatasync that must also
# commit a new file size to the filesystem's journal costs far more than one that
# only flushes data into blocks already written (ext4 here: 160 against 98 us of
# wall clock, 70 against 44 us of CPU): with the file grown ahead, the syncs that
# acknowledge hits are the cheap kind, and one in hundreds pays for the growth.
_GROW_MIN = 64 << 10
_GROW_MAX = 1 << 20
_ZEROS_VIEW = memoryview(bytes(_GROW_MAX))


class JournalWriter:
    """Appends hits to this process's journal segments with group commit.

    Create it in the process that uses it (after any fork): the background
    thread and the segment lock belong to one process. ``append`` may be awaited
    from any number of tasks, on any event loop; ``append_many`` from any
    thread. Either raises the ``OSError`` of a failed write or ``fdatasync``
    (the hit is then not durable; the segment is abandoned and the next batch
    starts a new one), ``ValueError`` for a hit the format cannot hold, and
    :class:`JournalClosed` after ``close``.
    """

    def __init__(
        self,
        directory: Path | str,
        *,
        max_segment_bytes: int = 64 << 20,
        max_segment_age: float = 2.0,
        busy_delay: float = BUSY_DELAY_SECONDS,
        busy_batch: int = BUSY_BATCH,
    ) -> None:
        self.directory = Path(directory)
        self.max_segment_bytes = max_segment_bytes
        self.max_segment_age = max_segment_age
        self._pid = os.getpid()  # in segment names
        self._nonce = secrets.token_hex(4)
        self._sequence = 0
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes, int, Waiter]] = []
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._forked = False
        # Owned by the writer thread from here on.
        self._fd = -1
        self._durable_fd = -1
        self._size = 0
        self._allocated = 0  # the segment file's length: records, then zeros
        self._may_grow = True
        self._opened_at = 0.0
        self.segment_path: Path | None = None
        self.stats = {"records": 0, "commits": 0, "segments": 0, "failed_commits": 0}
        self.busy_delay = busy_delay
        self.busy_batch = busy_batch
        self._last_batch = 0
        _writers.add(self)

    async def append(self, hit: Hit) -> None:
        """Append one hit; returns once its record is durable."""
        record = encode_hit(hit)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._submit(record, 1, fut)
        await fut

    def append_many(self, hits: list[Hit]) -> None:
        """Append hits from a plain thread (tools, tests); returns once all are durable."""
        if not hits:
            return
        data = b"".join([encode_hit(hit) for hit in hits])
        fut: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._submit(data, len(hits), fut)
        fut.result()

    def close(self) -> None:
        """Write what is queued, close the open segment (releasing its lock) and stop."""
        if self._forked:
            return
        with self._lock:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> JournalWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> JournalWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _submit(self, data: bytes, count: int, waiter: Waiter) -> None:
        # Checked before taking the lock: a fork may have copied it locked.
        if self._forked:
            raise RuntimeError("a JournalWriter must be created in the process that uses it")
        with self._lock:
            if self._closed:
                raise JournalClosed("the journal writer is closed")
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="mailbeacon-journal-writer", daemon=True
                )
                self._thread.start()
            self._pending.append((data, count, waiter))
        # The thread clears the event before it takes the queue, so an append
        # that finds it set is still seen by the coming drain.
        if not self._wake.is_set():
            self._wake.set()

    def _run(self) -> None:
        """The writer thread: one write and one fdatasync per batch of queued records."""
        while True:
            timeout = None
            if self._fd >= 0:
                timeout = max(0.0, self._opened_at + self.max_segment_age - time.monotonic())
            self._wake.wait(timeout)
            if self.busy_delay and self._last_batch >= self.busy_batch:
                # Busy: let the batch fill a little longer. Each fdatasync costs the
                # core far more than its records do (the system call, a disk
                # notification that exits the VM, two thread switches, a wake-up of
                # the event loop), so fewer, larger batches leave more of it to the
                # requests; a lone hit never waits.
                time.sleep(self.busy_delay)
            self._wake.clear()
            with self._lock:
                items, self._pending = self._pending, []
                closing = self._closed
            self._last_batch = len(items)
            if items:
                try:
                    self._commit(items)
                except Exception as exc:  # a bug, not I/O: never leave appenders hanging
                    log.exception("journal writer failed a batch")
                    self._abandon_segment()
                    self._settle(items, exc)
            if self._fd >= 0 and (
                closing or time.monotonic() - self._opened_at >= self.max_segment_age
            ):
                self._close_segment()
            if closing:
                return

    def _commit(self, items: list[tuple[bytes, int, Waiter]]) -> None:
        data = items[0][0] if len(items) == 1 else b"".join([item[0] for item in items])
        try:
            if self._fd < 0:
                self._open_segment()
            if self._size + len(data) > self._allocated and self._may_grow:
                try:
                    self._grow(self._size + len(data))
                except OSError as exc:
                    # A nearly full disk may take the records though not the room
                    # ahead: they are written as before, making the file longer, and
                    # this segment is not grown again.
                    log.warning("could not grow the journal segment ahead: %s", exc)
                    self._may_grow = False
            _write_all(self._fd, data, self._size)
            _datasync(self._fd)
        except OSError as exc:
            # After a failed write or fdatasync the file's state is unknown (Linux
            # may drop the dirty pages and report the error once only), so no
            # later record may be acknowledged in it: the next batch starts anew.
            log.error("journal write failed, %d records not durable: %s", len(items), exc)
            self.stats["failed_commits"] += 1
            self._abandon_segment()
            self._settle(items, exc)
            return
        self._size += len(data)
        # Records written without room ahead (see above) made the file longer: zeros
        # are never written where they are.
        self._allocated = max(self._allocated, self._size)
        try:
            os.pwrite(self._durable_fd, _DURABLE.pack(self._size, self._size ^ _ALL_ONES), 0)
        except OSError as exc:
            # Only live tailing needs it; the records are durable all the same and
            # a consumer reads them once the segment is closed.
            log.warning("could not publish the journal's durable length: %s", exc)
        self.stats["commits"] += 1
        self.stats["records"] += sum(item[1] for item in items)
        self._settle(items, None)
        if self._size >= self.max_segment_bytes:
            self._close_segment()

    def _settle(self, items: list[tuple[bytes, int, Waiter]], error: BaseException | None) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for _, _, waiter in items:
            if isinstance(waiter, asyncio.Future):
                by_loop.setdefault(waiter.get_loop(), []).append(waiter)
            elif waiter.done():
                continue
            elif error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(_settle_async, futures, error)

    def _open_segment(self) -> None:
        # Hits name people (network prefix, agent): the folder is its owner's alone.
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._sequence += 1
        stem = f"{time.time_ns():020d}-{self._pid}-{self._nonce}-{self._sequence:06d}"
        creating = self.directory / (stem + _CREATING_SUFFIX)
        path = self.directory / (stem + SEGMENT_SUFFIX)
        fd = os.open(creating, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        durable_fd = -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, segment_header())
            durable_fd = os.open(
                self.directory / (stem + _DURABLE_SUFFIX), os.O_WRONLY | os.O_CREAT, 0o600
            )
            os.pwrite(durable_fd, _DURABLE.pack(HEADER_SIZE, HEADER_SIZE ^ _ALL_ONES), 0)
            os.rename(creating, path)
            _fsync_directory(self.directory)
        except BaseException:
            os.close(fd)
            if durable_fd >= 0:
                os.close(durable_fd)
            raise
        self._fd = fd
        self._durable_fd = durable_fd
        self._size = self._allocated = HEADER_SIZE
        self._may_grow = True
        self._opened_at = time.monotonic()
        self.segment_path = path
        self.stats["segments"] += 1

    def _grow(self, needed: int) -> None:
        """Write zeros past the records so that the file holds at least ``needed`` bytes;
        the coming fdatasync makes them durable with the batch's records."""
        step = min(max(_GROW_MIN, self._allocated), _GROW_MAX)
        target = max(needed, self._allocated + step)
        while self._allocated < target:
            n = min(target - self._allocated, _GROW_MAX)
            _write_all(self._fd, _ZEROS_VIEW[:n], self._allocated)
            self._allocated += n

    def _close_segment(self) -> None:
        # The zeros past the records go, so that a closed segment ends with its last
        # record. Not synced: a crash that loses the cut leaves zeros, which a
        # consumer reads as a torn tail (no record in them was ever acknowledged).
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)
        # Closing releases the flock: from now on consumers may finish and delete it.
        os.close(self._durable_fd)
        os.close(self._fd)
        self._fd = self._durable_fd = -1
        self.segment_path = None

    def _abandon_segment(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                self._close_segment()
        self._fd = self._durable_fd = -1
        self.segment_path = None


DamageKind = Literal["damaged", "torn_tail", "torn_write", "unknown_record_type", "unknown_version"]


@dataclass(frozen=True, slots=True)
class JournalDamage:
    """Bytes of a segment the consumer could not deliver, and why."""

    segment: str
    offset: int
    length: int
    kind: DamageKind
    # Where a copy of damaged bytes was kept, if it was.
    copy: Path | None = None


class _Claim:
    """One segment held under its consumer lock for the time of a pass."""

    def __init__(self, path: Path, pos_fd: int, seg_fd: int, live: bool, limit: int) -> None:
        self.path = path
        self.pos_fd = pos_fd
        self.seg_fd = seg_fd
        self.live = live
        self.limit = limit
        self.sequence, self.saved = _read_checkpoint(pos_fd)
        self.position = max(self.saved, HEADER_SIZE)
        self.blocked = False  # stopped at something this version cannot read
        self.exhausted = False

    @property
    def finished(self) -> bool:
        """Read to its end and closed for good: it can be deleted."""
        return self.exhausted and not self.live and not self.blocked and self.position >= self.limit

    def checkpoint(self) -> None:
        self.sequence += 1
        slot = _CHECKPOINT.pack(_CHECKPOINT_MAGIC, self.sequence, self.position, 0)[:24]
        slot += struct.pack("<I", zlib.crc32(slot))
        os.pwrite(self.pos_fd, slot, (self.sequence % 2) * _CHECKPOINT_SLOT)
        _datasync(self.pos_fd)
        self.saved = self.position

    def delete(self) -> None:
        stem = self.path.with_suffix("")
        self.path.unlink(missing_ok=True)
        Path(f"{stem}{_DURABLE_SUFFIX}").unlink(missing_ok=True)
        Path(f"{stem}{_POSITION_SUFFIX}").unlink(missing_ok=True)

    def release(self) -> None:
        os.close(self.seg_fd)
        os.close(self.pos_fd)  # releases the claim


def _read_checkpoint(fd: int) -> tuple[int, int]:
    """(sequence, offset) of the newest valid checkpoint slot; (0, 0) if none."""
    data = os.pread(fd, _CHECKPOINT_SLOT + _CHECKPOINT.size, 0)
    best = (0, 0)
    for at in (0, _CHECKPOINT_SLOT):
        slot = data[at : at + _CHECKPOINT.size]
        if len(slot) < _CHECKPOINT.size:
            continue
        magic, sequence, offset, crc = _CHECKPOINT.unpack(slot)
        if magic == _CHECKPOINT_MAGIC and zlib.crc32(slot[:24]) == crc and sequence > best[0]:
            best = (sequence, offset)
    return best


def _read_durable_length(path: Path) -> int:
    length = _published_length(path)
    return HEADER_SIZE if length is None else length


def _published_length(path: Path) -> int | None:
    """The length a ``.durable`` file publishes, or None if it holds none."""
    try:
        data = Path(path).read_bytes()[: _DURABLE.size]
    except FileNotFoundError:
        return None
    if len(data) < _DURABLE.size:
        return None
    length, check = _DURABLE.unpack(data)
    # A read racing the writer's pwrite could in principle see half of each.
    return int(length) if length ^ check == _ALL_ONES else None


def _is_live(path: Path) -> bool:
    """Whether a writer still holds the segment (see "Locks and lifecycle")."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def journal_backlog(directory: Path | str, *, sample_bytes: int = 1 << 20) -> tuple[int, float]:
    """Records the segments hold past their checkpoints, and the oldest one's time (or 0).

    For monitoring: read without any lock, so a segment being written or consumed
    may be counted a moment early or late. Past ``sample_bytes`` of a segment the
    count is estimated from the mean record size of what was read.
    """
    folder = Path(directory)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return 0, 0.0
    total = 0
    oldest = 0.0
    for name in names:
        if not name.endswith(SEGMENT_SUFFIX):
            continue
        path = folder / name
        position = HEADER_SIZE
        try:
            size = path.stat().st_size
            if _is_live(path):
                # Its file runs on in zeros past its records (see _GROW_MIN).
                published = _published_length(path.with_suffix(_DURABLE_SUFFIX))
                size = min(size, HEADER_SIZE if published is None else published)
            with contextlib.suppress(FileNotFoundError):
                fd = os.open(path.with_suffix(_POSITION_SUFFIX), os.O_RDONLY)
                try:
                    position = max(position, _read_checkpoint(fd)[1])
                finally:
                    os.close(fd)
            if size <= position:
                continue
            with path.open("rb") as fh:
                fh.seek(position)
                data = fh.read(min(sample_bytes, size - position))
        except FileNotFoundError:
            continue  # consumed and deleted meanwhile
        hits: list[Hit] = []
        offset, _ = decode_records(data, 0, len(data), len(data), hits)
        if not hits:
            continue
        total += len(hits)
        if len(data) < size - position:
            total += round((size - position - offset) * len(hits) / offset)
        first = hits[0].occurred_at
        oldest = first if not oldest else min(oldest, first)
    return total, oldest


class JournalConsumer:
    """Moves journal records into ``store`` in batches, then checkpoints and deletes.

    ``store(batch)`` receives up to ``batch_size`` hits, possibly from several
    segments, and must be idempotent by hit uid: a crash between ``store`` and
    the checkpoint delivers the same hits again. If it raises, nothing is
    checkpointed and :meth:`consume_available` re-raises; the same hits come
    again on the next call. It should set aside hits it will never accept
    (rather than raise), or the segments holding them are retried forever.

    Any number of consumers, in any processes, may share a directory: a segment
    is read by one consumer at a time. One consumer object is used by one
    thread at a time.
    """

    def __init__(
        self,
        directory: Path | str,
        store: Callable[[list[Hit]], None],
        *,
        batch_size: int = 5000,
        on_damage: Callable[[JournalDamage], None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self._store = store
        self.batch_size = batch_size
        self._on_damage = on_damage
        self._reported: set[tuple[str, int, str]] = set()
        self.stats = {"delivered": 0, "batches": 0, "deleted_segments": 0, "damaged_bytes": 0}

    def run(
        self,
        stop: threading.Event,
        *,
        poll_interval: float = 0.25,
        retry_interval: float = 1.0,
    ) -> None:
        """Consume until ``stop`` is set, polling while idle and backing off after failures."""
        while not stop.is_set():
            try:
                delivered = self.consume_available()
            except Exception:
                log.exception("journal consumer pass failed; retrying")
                stop.wait(retry_interval)
                continue
            if delivered == 0:
                stop.wait(poll_interval)

    def consume_available(self) -> int:
        """Deliver every record durable now in segments no other consumer holds.

        Returns the number of hits handed to ``store``. Raises what ``store``
        raised, after releasing its claims without moving any position.
        """
        names = self._list()
        delivered = 0
        batch: list[Hit] = []
        held: list[_Claim] = []
        try:
            for name in names:
                if not name.endswith(SEGMENT_SUFFIX):
                    continue
                claim = self._claim(self.directory / name)
                if claim is None:
                    continue
                held.append(claim)
                while not claim.exhausted:
                    self._read(claim, batch)
                    if len(batch) >= self.batch_size:
                        delivered += self._flush(batch, held)
                        batch = []
                        held = self._keep_current(held, claim)
            delivered += self._flush(batch, held)
        finally:
            for claim in held:
                claim.release()
        return delivered

    def _list(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []
        self._remove_leftovers(names)
        return names

    def _flush(self, batch: list[Hit], held: list[_Claim]) -> int:
        if batch:
            self._store(batch)
            self.stats["batches"] += 1
            self.stats["delivered"] += len(batch)
        for claim in held:
            if claim.finished:
                claim.delete()
                self.stats["deleted_segments"] += 1
            elif claim.position != claim.saved:
                claim.checkpoint()
        return len(batch)

    @staticmethod
    def _keep_current(held: list[_Claim], current: _Claim) -> list[_Claim]:
        """Release the claims a flush has settled, keeping the one still being read."""
        kept = []
        for claim in held:
            if claim is current and not claim.exhausted:
                kept.append(claim)
            else:
                claim.release()
        return kept

    def _claim(self, path: Path) -> _Claim | None:
        pos_path = path.with_suffix(_POSITION_SUFFIX)
        try:
            pos_fd = os.open(pos_path, os.O_RDWR | os.O_CREAT, 0o600)
        except FileNotFoundError:
            return None  # the directory went away
        seg_fd = -1
        try:
            try:
                fcntl.flock(pos_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(pos_fd)
                return None  # another consumer has it
            if os.fstat(pos_fd).st_nlink == 0:
                # The consumer that held it before finished and deleted the segment.
                os.close(pos_fd)
                return None
            try:
                seg_fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                # Deleted before we created this .pos: remove our stray file.
                pos_path.unlink(missing_ok=True)
                os.close(pos_fd)
                return None
            try:
                fcntl.flock(seg_fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                live = True
                # Read the published length only now: it never exceeds what is written.
                limit = _read_durable_length(path.with_suffix(_DURABLE_SUFFIX))
            else:
                fcntl.flock(seg_fd, fcntl.LOCK_UN)
                live = False
                limit = os.fstat(seg_fd).st_size
            claim = _Claim(path, pos_fd, seg_fd, live, limit)
        except BaseException:
            if seg_fd >= 0:
                os.close(seg_fd)
            os.close(pos_fd)
            raise
        if not self._check_header(claim):
            claim.exhausted = True
        return claim

    def _check_header(self, claim: _Claim) -> bool:
        """Whether the segment's records can be read by this version."""
        data = os.pread(claim.seg_fd, HEADER_SIZE, 0)
        if len(data) < HEADER_SIZE:
            # Created but its header never reached the disk: no record was
            # acknowledged in it (that takes an fdatasync covering the header).
            claim.position = claim.limit = max(claim.limit, len(data))
            return False
        version = read_segment_header(data)
        if version is None:
            # Records carry their own markers and CRCs: read them all the same.
            self._report(claim, 0, HEADER_SIZE, "damaged")
            return True
        if version != FORMAT_VERSION:
            claim.blocked = True
            self._report(claim, 0, claim.limit, "unknown_version")
            return False
        return True

    def _read(self, claim: _Claim, batch: list[Hit]) -> None:
        """Decode records from the claim's position into ``batch`` until it is full
        or the segment's readable end is reached (then marks the claim exhausted)."""
        room = self.batch_size - len(batch)
        while room > 0 and claim.position < claim.limit:
            start = claim.position
            want = min(_WINDOW, claim.limit - start)
            buf = os.pread(claim.seg_fd, want, start)
            if len(buf) < want:
                claim.limit = start + len(buf)  # shorter than it said: read what is there
            at_end = start + len(buf) >= claim.limit
            before = len(batch)
            offset, status = decode_records(buf, 0, len(buf), room, batch)
            room -= len(batch) - before
            claim.position = start + offset
            if status in (Scan.FULL, Scan.END) or (status is Scan.PARTIAL and not at_end):
                continue
            if status is Scan.UNKNOWN_TYPE:
                claim.blocked = True
                claim.exhausted = True
                self._report(
                    claim, claim.position, claim.limit - claim.position, "unknown_record_type"
                )
                return
            self._skip_damage(claim)
        if claim.position >= claim.limit:
            claim.exhausted = True

    def _skip_damage(self, claim: _Claim) -> None:
        """Move the claim past bytes that are no valid record, and report them."""
        start = claim.position
        search = start + 1
        while search < claim.limit:
            want = min(_WINDOW, claim.limit - search)
            buf = os.pread(claim.seg_fd, want, search)
            if not buf:
                break
            at_end = search + len(buf) >= claim.limit
            offset, status = find_record(buf, 0, len(buf))
            if status is Scan.FOUND:
                found = search + offset
                kind: DamageKind = (
                    "torn_write" if self._unacknowledged_zeros(claim, start, found) else "damaged"
                )
                self._report(claim, start, found - start, kind)
                claim.position = found
                return
            if status is Scan.PARTIAL and not at_end:
                search += max(offset, 1)
            elif status is Scan.PARTIAL:
                search += offset + 1  # it cannot be whole: the readable bytes end inside it
            elif at_end:
                break
            else:
                search += max(offset, 1)
        # Nothing valid follows. In a live segment everything up to the durable
        # length was written whole, so it is damage; in a closed one it is the
        # write a crash cut short, which nobody was told had succeeded.
        kind = "damaged" if claim.live else "torn_tail"
        self._report(claim, start, claim.limit - start, kind)
        claim.position = claim.limit

    def _unacknowledged_zeros(self, claim: _Claim, start: int, end: int) -> bool:
        """Whether bytes a closed segment holds before a valid record are what a crash
        leaves of a write into the zeros ahead: past the length its writer last
        published (so no record there was acknowledged), beginning with zeros to the
        end of a block where the write's first block did not reach the disk. A sync
        of blocks already allocated keeps no order between them, so a later block
        may be on disk and an earlier one not."""
        if claim.live:
            return False
        published = _published_length(claim.path.with_suffix(_DURABLE_SUFFIX))
        if published is None or start < published:
            return False
        block = os.fstat(claim.seg_fd).st_blksize or 4096
        head = os.pread(claim.seg_fd, min(end, start + block - start % block) - start, start)
        return bool(head) and head.count(0) == len(head)

    def _report(self, claim: _Claim, offset: int, length: int, kind: DamageKind) -> None:
        key = (claim.path.name, offset, kind)
        if key in self._reported:
            return
        self._reported.add(key)
        copy = None
        if kind == "damaged":
            self.stats["damaged_bytes"] += length
            copy = self._keep_copy(claim, offset, length)
            log.error(
                "journal segment %s: %d damaged bytes at offset %d skipped (copy: %s)",
                claim.path.name,
                length,
                offset,
                copy,
            )
        elif kind in ("torn_tail", "torn_write"):
            log.warning(
                "journal segment %s: ignoring %d bytes at offset %d that a crash left of a"
                " write never acknowledged (%s)",
                claim.path.name,
                length,
                offset,
                kind.replace("_", " "),
            )
        else:
            log.error(
                "journal segment %s: %s at offset %d; left for a newer consumer",
                claim.path.name,
                kind.replace("_", " "),
                offset,
            )
        if self._on_damage is not None:
            self._on_damage(JournalDamage(claim.path.name, offset, length, kind, copy))

    def _keep_copy(self, claim: _Claim, offset: int, length: int) -> Path | None:
        """Keep damaged bytes for an operator: the segment itself is deleted once read."""
        try:
            folder = self.directory / DAMAGED_DIRECTORY
            folder.mkdir(mode=0o700, exist_ok=True)
            target = folder / f"{claim.path.stem}-{offset}.bin"
            data = os.pread(claim.seg_fd, min(length, _DAMAGED_COPY_MAX), offset)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            log.warning("could not keep a copy of damaged journal bytes: %s", exc)
            return None
        return target

    def _remove_leftovers(self, names: list[str]) -> None:
        """Remove files whose segment is gone, or that a writer died while creating."""
        present = set(names)
        for name in names:
            stem, dot, suffix = name.rpartition(".")
            if not dot or f"{stem}{SEGMENT_SUFFIX}" in present:
                continue
            path = self.directory / name
            if "." + suffix == _CREATING_SUFFIX:
                self._remove_if_unlocked(
                    path,
                    also=self.directory / (stem + _DURABLE_SUFFIX),
                    older_than=_CREATING_GRACE_SECONDS,
                )
            elif "." + suffix == _DURABLE_SUFFIX:
                # The writer makes .new, then .durable, then renames .new to .seg:
                # look for .new first so a rename in between cannot fool us.
                creating = self.directory / (stem + _CREATING_SUFFIX)
                segment = self.directory / (stem + SEGMENT_SUFFIX)
                if not creating.exists() and not segment.exists():
                    path.unlink(missing_ok=True)
            elif "." + suffix == _POSITION_SUFFIX:
                self._remove_if_unlocked(path, unless=self.directory / (stem + SEGMENT_SUFFIX))

    @staticmethod
    def _remove_if_unlocked(
        path: Path,
        *,
        also: Path | None = None,
        unless: Path | None = None,
        older_than: float = 0.0,
    ) -> None:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return
            status = os.fstat(fd)
            if status.st_nlink == 0 or (unless is not None and unless.exists()):
                return
            if time.time() - status.st_mtime < older_than:
                return
            path.unlink(missing_ok=True)
            if also is not None:
                also.unlink(missing_ok=True)
        finally:
            os.close(fd)
