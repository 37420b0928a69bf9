"""The hit journal: record format, group commit, claiming consumers, and crash safety.

The crash tests run real writer and consumer processes (journal_writer_proc.py,
journal_consumer_proc.py beside this file) and kill them with SIGKILL.
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import struct
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.tracking import journal
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalClosed, JournalConsumer, JournalDamage, JournalWriter
from mailbeacon.tracking.journal_records import (
    FRAME_SIZE,
    HEADER_SIZE,
    MARKER,
    Scan,
    decode_records,
    encode_hit,
    find_record,
    segment_header,
)

HERE = Path(__file__).resolve().parent
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def make_hit(n: int = 0, **fields: object) -> Hit:
    values: dict[str, object] = {
        "uid": uuid.uuid4().hex,
        "kind": "open",
        "copy_id": 1000 + n,
        "link_position": None,
        "occurred_at": 1_700_000_000.25 + n,
        "user_agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Thunderbird/128.0",
        "ip_prefix": "203.0.113.0/24",
        "network": None,
        "is_head": False,
        "prefetch_hint": None,
        "viewer_user_id": None,
    }
    values.update(fields)
    return Hit(**values)  # type: ignore[arg-type]


def decode_all(data: bytes) -> tuple[list[Hit], int, Scan]:
    out: list[Hit] = []
    offset, status = decode_records(data, 0, len(data), 1 << 30, out)
    return out, offset, status


def files(directory: Path, suffix: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.endswith(suffix))


def is_locked(path: Path) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def wait_until_unlocked(path: Path, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while is_locked(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


class Collect:
    """A store that keeps what it is given, and can be told to fail."""

    def __init__(self, fail_times: int = 0) -> None:
        self.hits: list[Hit] = []
        self.batches: list[int] = []
        self.fail_times = fail_times

    def __call__(self, batch: list[Hit]) -> None:
        if self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("database away")
        self.hits.extend(batch)
        self.batches.append(len(batch))


def write_closed_segment(directory: Path, hits: list[Hit]) -> Path:
    """A segment as a writer leaves it, through the real writer."""
    with JournalWriter(directory) as writer:
        writer.append_many(hits)
        path = writer.segment_path
    assert path is not None
    return path


def record_offsets(path: Path) -> list[tuple[int, int]]:
    """(offset, length) of each record of a well-formed segment."""
    data = path.read_bytes()
    offsets = []
    pos = HEADER_SIZE
    while pos < len(data):
        length = struct.unpack_from("<I", data, pos + 4)[0]
        offsets.append((pos, FRAME_SIZE + length))
        pos += FRAME_SIZE + length
    return offsets


# --- record format ---------------------------------------------------------

hit_strategy = st.builds(
    Hit,
    uid=st.binary(min_size=16, max_size=16).map(bytes.hex),
    kind=st.sampled_from(["open", "click"]),
    copy_id=I64,
    link_position=st.none() | I64,
    occurred_at=st.floats(allow_nan=False),
    user_agent=st.text(max_size=1000),
    ip_prefix=st.none() | st.text(max_size=45),
    network=st.none() | st.text(max_size=40),
    is_head=st.booleans(),
    prefetch_hint=st.none() | st.text(max_size=80),
    viewer_user_id=st.none() | I64,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(hit_strategy, min_size=1, max_size=5))
def test_records_read_back_every_field_exactly(hits: list[Hit]) -> None:
    data = b"".join(encode_hit(hit) for hit in hits)
    decoded, offset, status = decode_all(data)
    assert decoded == hits
    assert (offset, status) == (len(data), Scan.END)


def test_empty_text_and_absent_text_stay_distinct() -> None:
    hit = make_hit(ip_prefix="", network=None, prefetch_hint="", user_agent="")
    assert decode_all(encode_hit(hit))[0] == [hit]


@pytest.mark.parametrize(
    "fields",
    [
        {"uid": "ABCDEF0123456789ABCDEF0123456789"},  # would read back lowercase
        {"uid": "abc"},
        {"uid": "z" * 32},
        {"kind": "view"},
        {"copy_id": 2**63},
        {"viewer_user_id": -(2**63) - 1},
        {"user_agent": "x" * 70000},
        {"user_agent": "\ud800"},  # a lone surrogate has no UTF-8 form
    ],
)
def test_encoder_refuses_a_hit_it_could_not_read_back(fields: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each case fails with its own message
        encode_hit(make_hit(**fields))


def test_every_truncation_yields_only_whole_records() -> None:
    hits = [make_hit(i, link_position=i, kind="click") for i in range(3)]
    records = [encode_hit(h) for h in hits]
    data = b"".join(records)
    boundaries = {sum(len(r) for r in records[:k]): k for k in range(4)}
    for cut in range(len(data) + 1):
        decoded, _, status = decode_all(data[:cut])
        whole = max(k for b, k in boundaries.items() if b <= cut)
        assert decoded == hits[:whole]
        assert status is (Scan.END if cut in boundaries else Scan.PARTIAL)


def test_any_damaged_byte_is_caught_and_the_next_record_found() -> None:
    hits = [make_hit(i) for i in range(3)]
    records = [encode_hit(h) for h in hits]
    data = b"".join(records)
    first, second = len(records[0]), len(records[1])
    for at in range(first, first + second):
        for flip in (0x01, 0x80, 0xFF):
            damaged = bytearray(data)
            damaged[at] ^= flip
            decoded, offset, status = decode_all(bytes(damaged))
            # Never a changed hit: the damaged one is refused, not misread.
            assert decoded == hits[:1], (at, flip)
            assert offset == first
            assert status in (Scan.BAD, Scan.PARTIAL)
            found, found_status = find_record(bytes(damaged), offset + 1, len(damaged))
            assert (found, found_status) == (first + second, Scan.FOUND), (at, flip)


def test_search_reports_a_record_cut_by_the_buffer_end() -> None:
    record = encode_hit(make_hit())
    data = b"\x00" * 10 + record
    assert find_record(data, 0, len(data) - 1) == (10, Scan.PARTIAL)
    assert find_record(data, 0, len(data)) == (10, Scan.FOUND)
    assert find_record(b"\x00" * 100, 0, 100) == (97, Scan.NONE)


# --- writer ----------------------------------------------------------------


class FirstSyncGate:
    """Holds the journal's first fdatasync until ``release`` is set; counts every sync."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.syncs = 0
        self.entered = threading.Event()
        self.release = threading.Event()
        real = journal._datasync

        def gated(fd: int) -> None:
            self.syncs += 1
            if self.syncs == 1:
                self.entered.set()
                self.release.wait(30)
            real(fd)

        monkeypatch.setattr(journal, "_datasync", gated)


@pytest.fixture
def first_sync(monkeypatch: pytest.MonkeyPatch) -> FirstSyncGate:
    return FirstSyncGate(monkeypatch)


@pytest.mark.asyncio
async def test_append_returns_only_after_its_record_was_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_sync = threading.Event()
    release = threading.Event()
    synced: list[int] = []
    real = journal._datasync

    def held(fd: int) -> None:
        in_sync.set()
        release.wait(30)
        real(fd)
        synced.append(os.fstat(fd).st_size)

    monkeypatch.setattr(journal, "_datasync", held)
    async with JournalWriter(tmp_path) as writer:
        hit = make_hit()
        append = asyncio.create_task(writer.append(hit))
        assert await asyncio.to_thread(in_sync.wait, 30)
        await asyncio.sleep(0.05)
        assert not append.done()  # written, but not yet synced
        release.set()
        await append
        assert writer.segment_path is not None
        on_disk = writer.segment_path.read_bytes()
        assert decode_all(on_disk[HEADER_SIZE:])[0] == [hit]
        assert synced == [len(on_disk)]


@pytest.mark.asyncio
async def test_appends_arriving_during_a_sync_share_the_next_one(
    tmp_path: Path, first_sync: FirstSyncGate
) -> None:
    async with JournalWriter(tmp_path) as writer:
        first = asyncio.create_task(writer.append(make_hit(0)))
        assert await asyncio.to_thread(first_sync.entered.wait, 30)
        rest = [asyncio.create_task(writer.append(make_hit(i))) for i in range(1, 500)]
        await asyncio.sleep(0)  # every task queues its record
        first_sync.release.set()
        await asyncio.gather(first, *rest)
        assert first_sync.syncs == 2
        assert writer.stats["commits"] == 2 and writer.stats["records"] == 500


@pytest.mark.asyncio
async def test_after_a_busy_batch_the_writer_waits_for_more_but_never_for_a_lone_hit(
    tmp_path: Path, first_sync: FirstSyncGate
) -> None:
    async with JournalWriter(tmp_path, busy_delay=1.0, busy_batch=5) as writer:
        first = asyncio.create_task(writer.append(make_hit(0)))
        assert await asyncio.to_thread(first_sync.entered.wait, 30)
        queued = [asyncio.create_task(writer.append(make_hit(i))) for i in range(1, 10)]
        await asyncio.sleep(0)
        first_sync.release.set()
        await asyncio.gather(first, *queued)
        assert writer.stats["commits"] == 2  # 1, then the 9 that queued: a busy batch
        # The next append waits for company: one that comes 0.2 s later shares its sync.
        a = asyncio.create_task(writer.append(make_hit(10)))
        await asyncio.sleep(0.2)
        b = asyncio.create_task(writer.append(make_hit(11)))
        await asyncio.gather(a, b)
        assert writer.stats["commits"] == 3
        # That batch of 2 was not busy: a lone hit now goes out at once.
        started = time.monotonic()
        await writer.append(make_hit(12))
        assert time.monotonic() - started < 0.9
        assert writer.stats["commits"] == 4 and writer.stats["records"] == 13


@pytest.mark.asyncio
async def test_segments_sort_by_creation_and_name_their_writer(tmp_path: Path) -> None:
    async with JournalWriter(tmp_path, max_segment_bytes=1) as writer:
        for n in range(5):
            await writer.append(make_hit(n))
    segments = files(tmp_path, ".seg")
    assert len(segments) == 5
    firsts = [decode_all(p.read_bytes()[HEADER_SIZE:])[0][0].copy_id for p in segments]
    assert firsts == [1000, 1001, 1002, 1003, 1004]
    assert {p.name.split("-")[1] for p in segments} == {str(os.getpid())}
    assert len({p.name.split("-")[2] for p in segments}) == 1


@pytest.mark.asyncio
async def test_the_open_segment_is_locked_until_its_writer_closes_it(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path, max_segment_age=3600)
    await writer.append(make_hit())
    [segment] = files(tmp_path, ".seg")
    assert is_locked(segment)
    await writer.aclose()
    assert not is_locked(segment)


@pytest.mark.asyncio
async def test_an_idle_segment_is_closed_by_age_and_then_deleted_when_consumed(
    tmp_path: Path,
) -> None:
    async with JournalWriter(tmp_path, max_segment_age=0.1) as writer:
        hit = make_hit()
        await writer.append(hit)
        [segment] = files(tmp_path, ".seg")
        assert await asyncio.to_thread(wait_until_unlocked, segment, 10)
        store = Collect()
        assert JournalConsumer(tmp_path, store).consume_available() == 1
        assert store.hits == [hit]
        assert os.listdir(tmp_path) == []
        # The writer goes on in a new segment.
        await writer.append(make_hit(1))
        assert len(files(tmp_path, ".seg")) == 1


@pytest.mark.asyncio
async def test_close_writes_what_was_queued_and_refuses_more(tmp_path: Path) -> None:
    writer = JournalWriter(tmp_path)
    hits = [make_hit(i) for i in range(200)]
    tasks = [asyncio.create_task(writer.append(h)) for h in hits]
    await asyncio.sleep(0)
    await writer.aclose()
    await asyncio.gather(*tasks)
    with pytest.raises(JournalClosed):
        await writer.append(make_hit())
    store = Collect()
    JournalConsumer(tmp_path, store).consume_available()
    assert sorted(h.uid for h in store.hits) == sorted(h.uid for h in hits)


def test_append_many_from_threads_is_durable_on_return(tmp_path: Path) -> None:
    batches = [[make_hit(t * 100 + i) for i in range(100)] for t in range(4)]
    with JournalWriter(tmp_path) as writer:
        threads = [threading.Thread(target=writer.append_many, args=(b,)) for b in batches]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        store = Collect()
        JournalConsumer(tmp_path, store).consume_available()
    assert sorted(h.uid for h in store.hits) == sorted(h.uid for b in batches for h in b)


def test_a_failed_write_fails_its_batch_and_the_writer_goes_on_in_a_new_segment(
    tmp_path: Path,
) -> None:
    # RLIMIT_FSIZE makes the kernel refuse writes past 6 kB with EFBIG.
    proc = subprocess.run(
        [
            sys.executable,
            str(HERE / "journal_writer_proc.py"),
            str(tmp_path),
            "--appenders",
            "1",
            "--count",
            "150",
            "--file-size-limit",
            "6000",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = proc.stdout.split("\n")
    acked = {line.split()[1] for line in lines if line.startswith("ok ")}
    failed = [line.split() for line in lines if line.startswith("err ")]
    assert failed and all(int(errno) == 27 for _, _, errno in failed)  # EFBIG
    assert len(acked) + len(failed) == 150
    assert len(files(tmp_path, ".seg")) > 1
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    delivered = [h.uid for h in store.hits]
    assert acked <= set(delivered)
    assert len(delivered) == len(set(delivered))
    # The refused batch was cut off its segment when the writer gave the segment up.
    assert damage == []


def test_a_forked_child_neither_writes_nor_keeps_the_segment_locked(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "journal_fork_proc.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert proc.stdout.split("\n")[:2] == [
        "child refused: True",
        "unlocked while child lives: True",
    ]


# --- consumer --------------------------------------------------------------


def test_a_failing_store_moves_nothing_and_gets_the_same_hits_again(tmp_path: Path) -> None:
    hits = [make_hit(i) for i in range(10)]
    write_closed_segment(tmp_path, hits)
    store = Collect(fail_times=1)
    consumer = JournalConsumer(tmp_path, store)
    with pytest.raises(ConnectionError):
        consumer.consume_available()
    assert len(files(tmp_path, ".seg")) == 1
    assert consumer.consume_available() == 10
    assert store.hits == hits
    assert list(tmp_path.iterdir()) == []


def test_batches_that_were_stored_are_not_delivered_again_after_a_later_failure(
    tmp_path: Path,
) -> None:
    with JournalWriter(tmp_path, max_segment_bytes=1) as writer:
        hits = [make_hit(i) for i in range(3)]
        for hit in hits:
            writer.append_many([hit])
    assert len(files(tmp_path, ".seg")) == 3

    class FailSecond(Collect):
        calls = 0

        def __call__(self, batch: list[Hit]) -> None:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("database away")
            super().__call__(batch)

    store = FailSecond()
    consumer = JournalConsumer(tmp_path, store, batch_size=2)
    with pytest.raises(ConnectionError):
        consumer.consume_available()
    assert store.hits == hits[:2]
    assert len(files(tmp_path, ".seg")) == 1
    consumer.consume_available()
    assert store.hits == hits


def test_a_segment_held_by_one_consumer_is_skipped_by_another(tmp_path: Path) -> None:
    write_closed_segment(tmp_path, [make_hit(i) for i in range(3)])
    write_closed_segment(tmp_path, [make_hit(i) for i in range(3, 5)])
    other_store = Collect()
    other = JournalConsumer(tmp_path, other_store)
    seen_by_other: list[list[int]] = []

    def store(batch: list[Hit]) -> None:
        # While this batch is being stored its segment is still claimed.
        other.consume_available()
        seen_by_other.append([h.copy_id for h in other_store.hits])
        holder.hits.extend(batch)

    holder = Collect()
    JournalConsumer(tmp_path, store, batch_size=3).consume_available()
    assert seen_by_other[0] == [1003, 1004]
    assert [h.copy_id for h in holder.hits] == [1000, 1001, 1002]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.asyncio
async def test_a_live_segment_is_followed_and_kept_until_its_writer_closes_it(
    tmp_path: Path,
) -> None:
    store = Collect()
    consumer = JournalConsumer(tmp_path, store)
    async with JournalWriter(tmp_path, max_segment_age=3600) as writer:
        first = [make_hit(i) for i in range(10)]
        await asyncio.gather(*(writer.append(h) for h in first))
        assert consumer.consume_available() == 10
        assert consumer.consume_available() == 0
        second = [make_hit(i) for i in range(10, 15)]
        await asyncio.gather(*(writer.append(h) for h in second))
        # A new consumer starts from the checkpoint, not from the beginning.
        assert JournalConsumer(tmp_path, store).consume_available() == 5
        assert len(files(tmp_path, ".seg")) == 1
    assert consumer.consume_available() == 0
    assert sorted(h.uid for h in store.hits) == sorted(h.uid for h in first + second)
    assert os.listdir(tmp_path) == []


@pytest.mark.asyncio
async def test_a_running_consumer_delivers_from_a_live_writer_and_retries_a_failed_store(
    tmp_path: Path,
) -> None:
    delivered = threading.Event()
    store = Collect(fail_times=2)
    original = store.__call__

    def storing(batch: list[Hit]) -> None:
        original(batch)
        delivered.set()

    consumer = JournalConsumer(tmp_path, storing)
    stop = threading.Event()
    runner = threading.Thread(
        target=consumer.run, args=(stop,), kwargs={"poll_interval": 0.01, "retry_interval": 0.01}
    )
    runner.start()
    try:
        async with JournalWriter(tmp_path, max_segment_age=3600) as writer:
            hit = make_hit()
            await writer.append(hit)
            assert await asyncio.to_thread(delivered.wait, 30)
            assert store.hits == [hit]
            assert store.fail_times == 0
            assert writer.segment_path is not None and writer.segment_path.exists()
    finally:
        stop.set()
        await asyncio.to_thread(runner.join, 30)
    assert not runner.is_alive()


@pytest.mark.asyncio
async def test_a_live_segment_is_read_no_further_than_its_synced_length(
    tmp_path: Path,
) -> None:
    store = Collect()
    damage: list[JournalDamage] = []
    consumer = JournalConsumer(tmp_path, store, on_damage=damage.append)
    writer = JournalWriter(tmp_path, max_segment_age=3600)
    synced = make_hit(1)
    await writer.append(synced)
    path = writer.segment_path
    assert path is not None
    # What a write not yet covered by fdatasync looks like to another process: bytes
    # in the zeros the file was grown by, past the published durable length.
    unsynced = make_hit(2)
    written = encode_hit(unsynced) + encode_hit(make_hit(3))[:20]
    end = durable_length(path)
    with path.open("r+b") as f:
        f.seek(end)
        f.write(written)
    assert path.stat().st_size > end + len(written)
    assert consumer.consume_available() == 1
    assert store.hits == [synced]
    assert damage == []
    await writer.aclose()
    # What a crash in that write leaves of a closed segment: the segment read to its
    # end, the half record is a torn tail.
    with path.open("ab") as f:
        f.write(written)
    assert consumer.consume_available() == 1
    assert store.hits == [synced, unsynced]
    assert [d.kind for d in damage] == ["torn_tail"]


def durable_length(segment: Path) -> int:
    length, check = struct.unpack("<QQ", segment.with_suffix(".durable").read_bytes())
    assert length ^ check == 2**64 - 1
    return int(length)


@pytest.mark.asyncio
async def test_a_segment_is_grown_ahead_of_its_records_and_cut_to_them_when_closed(
    tmp_path: Path,
) -> None:
    writer = JournalWriter(tmp_path, max_segment_age=3600)
    first = [make_hit(i) for i in range(20)]
    await writer.append(first[0])
    path = writer.segment_path
    assert path is not None
    grown = path.stat().st_size
    end = durable_length(path)
    assert grown >= journal._GROW_MIN > end
    assert path.read_bytes()[end:] == bytes(grown - end)
    # The next records go into those zeros: the syncs that acknowledge them need not
    # commit a new file size.
    for hit in first[1:]:
        await writer.append(hit)
    assert path.stat().st_size == grown
    assert durable_length(path) > end
    # Past them the file grows again, never by more than _GROW_MAX ahead of its records.
    more = [make_hit(i, user_agent="A" * 700) for i in range(20, 4020)]
    sizes = []
    for at in range(0, len(more), 100):
        await asyncio.to_thread(writer.append_many, more[at : at + 100])
        sizes.append(path.stat().st_size - durable_length(path))
    assert path.stat().st_size > 3 * journal._GROW_MAX
    assert max(sizes) <= journal._GROW_MAX
    await writer.aclose()
    assert path.stat().st_size == durable_length(path)
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == first + more
    assert damage == []


@pytest.mark.asyncio
async def test_the_backlog_of_a_live_segment_counts_its_records_not_its_zeros(
    tmp_path: Path,
) -> None:
    async with JournalWriter(tmp_path, max_segment_age=3600) as writer:
        for i in range(40):
            await writer.append(make_hit(i))
        assert writer.segment_path is not None and is_locked(writer.segment_path)
        # Past the sample the count is estimated from the bytes left: the records'.
        for sample in (400, 1 << 20):
            records, oldest = journal.journal_backlog(tmp_path, sample_bytes=sample)
            assert records == 40 and oldest == make_hit(0).occurred_at


def test_a_disk_without_room_ahead_still_takes_the_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = os.pwrite

    def full_for_zeros(fd: int, data: bytes, offset: int) -> int:
        if len(data) >= journal._GROW_MIN and not any(data):
            # What ENOSPC halfway through the zeros looks like.
            real(fd, bytes(4096), offset)
            raise OSError(28, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(journal.os, "pwrite", full_for_zeros)
    hits = [make_hit(i) for i in range(30)]
    with JournalWriter(tmp_path) as writer:
        for at in range(0, 30, 10):
            writer.append_many(hits[at : at + 10])
        path = writer.segment_path
        assert path is not None
        assert writer.stats["failed_commits"] == 0
    assert path.stat().st_size == durable_length(path)
    monkeypatch.undo()
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == hits
    assert damage == []


def test_a_failed_sync_cuts_its_batch_off_and_the_next_starts_a_new_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = journal._datasync
    calls = 0

    def second_fails(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise OSError(5, "Input/output error")
        real(fd)

    monkeypatch.setattr(journal, "_datasync", second_fails)
    first, failed, after = ([make_hit(i + n) for i in range(10)] for n in (0, 10, 20))
    with JournalWriter(tmp_path, max_segment_age=3600) as writer:
        writer.append_many(first)
        given_up = writer.segment_path
        with pytest.raises(OSError, match="Input/output error"):
            writer.append_many(failed)
        writer.append_many(after)
        assert writer.segment_path != given_up
    assert given_up is not None and given_up.stat().st_size == durable_length(given_up)
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == first + after
    assert damage == []


def crash_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, acked: list[Hit]) -> Path:
    """A closed segment as a crash leaves it: records, then the zeros grown ahead."""
    with monkeypatch.context() as m:
        m.setattr(journal.os, "ftruncate", lambda fd, length: None)
        with JournalWriter(tmp_path) as writer:
            writer.append_many(acked)
            path = writer.segment_path
    assert path is not None and path.stat().st_size > durable_length(path)
    return path


def test_zeros_before_records_past_the_published_length_are_a_torn_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acked = [make_hit(i) for i in range(10)]
    path = crash_image(tmp_path, monkeypatch, acked)
    end = durable_length(path)
    # A batch written into the zeros and synced when the power failed: its later
    # blocks reached the disk, the first did not.
    later = [make_hit(i) for i in range(10, 80)]
    records = [encode_hit(h) for h in later]
    cut = 4096 - end % 4096
    with path.open("r+b") as f:
        f.seek(end + cut)
        f.write(b"".join(records)[cut:])
    starts = [sum(len(r) for r in records[:i]) for i in range(len(records))]
    whole = next(i for i, at in enumerate(starts) if at >= cut)
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    # Records of a write nobody was told had succeeded may come or not: these come.
    assert store.hits == acked + later[whole:]
    assert [(d.kind, d.offset) for d in damage] == [
        ("torn_write", end),
        ("torn_tail", end + sum(len(r) for r in records)),
    ]


def test_zeros_among_acknowledged_records_are_damage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acked = [make_hit(i) for i in range(100)]
    path = crash_image(tmp_path, monkeypatch, acked)
    end = durable_length(path)
    # A block lost from the record 40 on, as a torn write looks, but among records
    # acknowledged: the disk lost what it had said was written.
    offsets = [at for at, _ in record_offsets(path)[:100]]
    block_end = offsets[40] + 4096 - offsets[40] % 4096
    with path.open("r+b") as f:
        f.seek(offsets[40])
        f.write(bytes(block_end - offsets[40]))
    after = next(i for i, at in enumerate(offsets) if at >= block_end)
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == acked[:40] + acked[after:]
    assert [(d.kind, d.offset) for d in damage] == [
        ("damaged", offsets[40]),
        ("torn_tail", end),
    ]


def test_the_zeros_a_crash_leaves_past_the_records_are_a_torn_tail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The cut at close is not synced: a crash may lose it, or come before it.
    monkeypatch.setattr(journal.os, "ftruncate", lambda fd, length: None)
    hits = [make_hit(i) for i in range(50)]
    with JournalWriter(tmp_path) as writer:
        writer.append_many(hits)
        path = writer.segment_path
        assert path is not None
    end = durable_length(path)
    assert path.stat().st_size > end
    monkeypatch.undo()
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert sorted(h.uid for h in store.hits) == sorted(h.uid for h in hits)
    assert [(d.kind, d.offset) for d in damage] == [("torn_tail", end)]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("keep", [1, 5, 30, -1])
def test_a_torn_tail_is_ignored_and_the_segment_deleted(tmp_path: Path, keep: int) -> None:
    hits = [make_hit(i) for i in range(4)]
    path = write_closed_segment(tmp_path, hits)
    size = path.stat().st_size
    last_offset, last_length = record_offsets(path)[-1]
    os.truncate(path, last_offset + (keep if keep > 0 else last_length - 1))
    assert path.stat().st_size < size
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == hits[:3]
    assert [(d.kind, d.offset) for d in damage] == [("torn_tail", last_offset)]
    assert list(tmp_path.iterdir()) == []


def test_a_segment_whose_header_never_reached_the_disk_is_dropped(tmp_path: Path) -> None:
    (tmp_path / "00000000000000000001-1-abcdef01-000001.seg").write_bytes(segment_header()[:7])
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, Collect(), on_damage=damage.append).consume_available()
    assert list(tmp_path.iterdir()) == []
    assert damage == []


@pytest.mark.parametrize("where", ["payload", "length", "marker", "crc"])
def test_a_damaged_record_is_skipped_reported_and_kept_for_an_operator(
    tmp_path: Path, where: str
) -> None:
    hits = [make_hit(i) for i in range(5)]
    path = write_closed_segment(tmp_path, hits)
    offset, length = record_offsets(path)[2]
    original = path.read_bytes()[offset : offset + length]
    at = {"marker": 0, "length": 6, "crc": 9, "payload": FRAME_SIZE + 30}[where]
    with path.open("r+b") as f:
        f.seek(offset + at)
        byte = f.read(1)
        f.seek(offset + at)
        f.write(bytes([byte[0] ^ 0x5A]))
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == hits[:2] + hits[3:]
    [report] = damage
    assert (report.kind, report.offset, report.length) == ("damaged", offset, length)
    assert report.copy is not None
    kept = report.copy.read_bytes()
    assert kept[:at] + kept[at + 1 :] == original[:at] + original[at + 1 :]
    assert files(tmp_path, ".seg") == []


def test_garbage_between_records_does_not_hide_the_records_after_it(tmp_path: Path) -> None:
    hits = [make_hit(i) for i in range(4)]
    path = write_closed_segment(tmp_path, hits)
    offset, _ = record_offsets(path)[2]
    data = path.read_bytes()
    garbage = MARKER + b"\xff\xff\x00\x00" + os.urandom(300) + MARKER + b"\x10"
    path.write_bytes(data[:offset] + garbage + data[offset:])
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == hits
    assert [(d.kind, d.offset, d.length) for d in damage] == [("damaged", offset, len(garbage))]


def test_records_and_damage_larger_than_one_read_window_are_handled(tmp_path: Path) -> None:
    hits = [make_hit(i, user_agent="A" * (i % 300)) for i in range(12_000)]
    path = write_closed_segment(tmp_path, hits)
    assert path.stat().st_size > 2 * journal._WINDOW
    offset, _ = record_offsets(path)[6000]
    data = path.read_bytes()
    garbage = os.urandom(journal._WINDOW + 12345).replace(MARKER, b"....")
    path.write_bytes(data[:offset] + garbage + data[offset:])
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, batch_size=5000, on_damage=damage.append).consume_available()
    assert store.hits == hits
    assert max(store.batches) == 5000
    assert [(d.kind, d.offset, d.length) for d in damage] == [("damaged", offset, len(garbage))]


def frame(payload: bytes) -> bytes:
    return MARKER + struct.pack("<II", len(payload), zlib.crc32(payload)) + payload


def test_an_unknown_record_type_stops_its_segment_but_not_the_others(tmp_path: Path) -> None:
    older, newer = make_hit(1), make_hit(2)
    unknown = tmp_path / "00000000000000000001-1-abcdef01-000001.seg"
    unknown.write_bytes(
        segment_header() + encode_hit(older) + frame(b"\x63future record") + encode_hit(newer)
    )
    later = write_closed_segment(tmp_path, [make_hit(3)])
    store = Collect()
    damage: list[JournalDamage] = []
    consumer = JournalConsumer(tmp_path, store, on_damage=damage.append)
    consumer.consume_available()
    assert [h.copy_id for h in store.hits] == [older.copy_id, 1003]
    assert unknown.exists() and not later.exists()
    assert [d.kind for d in damage] == ["unknown_record_type"]
    consumer.consume_available()
    assert len(store.hits) == 2 and len(damage) == 1


def test_a_segment_of_an_unknown_format_version_is_left_alone(tmp_path: Path) -> None:
    head = b"MBJOURNL" + struct.pack("<HH", 2, 16)
    path = tmp_path / "00000000000000000001-1-abcdef01-000001.seg"
    path.write_bytes(head + struct.pack("<I", zlib.crc32(head)) + encode_hit(make_hit()))
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(tmp_path, store, on_damage=damage.append).consume_available()
    assert store.hits == []
    assert path.exists()
    assert [d.kind for d in damage] == ["unknown_version"]


@pytest.mark.asyncio
async def test_a_torn_checkpoint_write_falls_back_to_the_previous_checkpoint(
    tmp_path: Path,
) -> None:
    store = Collect()
    async with JournalWriter(tmp_path, max_segment_age=3600) as writer:
        first = [make_hit(i) for i in range(3)]
        await asyncio.gather(*(writer.append(h) for h in first))
        JournalConsumer(tmp_path, store).consume_available()  # checkpoint 1, slot 1
        second = [make_hit(i) for i in range(3, 5)]
        await asyncio.gather(*(writer.append(h) for h in second))
        JournalConsumer(tmp_path, store).consume_available()  # checkpoint 2, slot 0
        [position] = files(tmp_path, ".pos")
        with position.open("r+b") as f:
            f.write(b"\x00" * 20)  # the newest slot, torn
        again = Collect()
        JournalConsumer(tmp_path, again).consume_available()
        assert again.hits == second
        # Both slots unreadable: start over (at least once, never lost).
        with position.open("r+b") as f:
            f.seek(512)
            f.write(b"\x00" * 20)
            f.seek(0)
            f.write(b"\x00" * 20)
        again = Collect()
        JournalConsumer(tmp_path, again).consume_available()
        assert again.hits == first + second


def test_leftovers_of_dead_writers_and_consumers_are_cleared(tmp_path: Path) -> None:
    old = time.time() - 3600
    dead_new = tmp_path / "00000000000000000001-1-abcdef01-000001.new"
    dead_new.write_bytes(segment_header())
    (tmp_path / "00000000000000000001-1-abcdef01-000001.durable").write_bytes(b"\x00" * 16)
    os.utime(dead_new, (old, old))
    young_new = tmp_path / "00000000000000000002-1-abcdef01-000002.new"
    young_new.write_bytes(segment_header())
    locked_new = tmp_path / "00000000000000000003-1-abcdef01-000003.new"
    locked_new.write_bytes(segment_header())
    os.utime(locked_new, (old, old))
    orphan_pos = tmp_path / "00000000000000000004-1-abcdef01-000004.pos"
    orphan_pos.write_bytes(b"")
    orphan_durable = tmp_path / "00000000000000000005-1-abcdef01-000005.durable"
    orphan_durable.write_bytes(b"")
    fd = os.open(locked_new, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        JournalConsumer(tmp_path, Collect()).consume_available()
    finally:
        os.close(fd)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young_new.name, locked_new.name])


# --- crash safety with real processes --------------------------------------


def assert_consumed(directory: Path) -> None:
    """Nothing left but what a writer killed while creating a segment may leave:
    an unnamed ``.new`` (removed once it is older than a grace period) holding
    no record, and its ``.durable``."""
    left = sorted(directory.iterdir())
    for path in left:
        assert path.suffix in (".new", ".durable"), path.name
        if path.suffix == ".new":
            assert path.stat().st_size <= HEADER_SIZE
        else:
            assert path.with_suffix(".new") in left
    assert len(left) <= 2


class Proc:
    """A helper script in its own process, its stdout lines collected by a thread."""

    def __init__(self, script: str, *args: str) -> None:
        self.lines: list[str] = []
        self.popen = subprocess.Popen(
            [sys.executable, str(HERE / script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.popen.stdout is not None
        for line in self.popen.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: object, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if callable(predicate) and predicate():
                return
            if self.popen.poll() is not None:
                self._reader.join(5)
                if callable(predicate) and predicate():
                    return
                stderr = self.popen.stderr.read() if self.popen.stderr else ""
                raise AssertionError(f"process ended early: {stderr}")
            time.sleep(0.01)
        raise AssertionError("timed out waiting for the process")

    def acked(self) -> set[str]:
        return {line.split()[1] for line in list(self.lines) if line.startswith("ok ")}

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.finish()

    def finish(self, timeout: float = 120) -> int:
        code = self.popen.wait(timeout)
        self._reader.join(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()
        return code


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        proc.kill()


def test_a_writer_killed_under_load_loses_no_acknowledged_hit(
    tmp_path: Path, procs: list[Proc]
) -> None:
    directory = tmp_path / "journal"
    writer = Proc(
        "journal_writer_proc.py",
        str(directory),
        "--appenders",
        "32",
        "--segment-bytes",
        "32768",
        "--segment-age",
        "0.2",
    )
    procs.append(writer)
    writer.wait_for(lambda: len(writer.lines) >= 3000)
    writer.kill()
    acked = writer.acked()
    assert len(acked) >= 3000
    store = Collect()
    damage: list[JournalDamage] = []
    JournalConsumer(directory, store, on_damage=damage.append).consume_available()
    # The zeros past the dead writer's last records are no damage.
    assert {d.kind for d in damage} <= {"torn_tail"}
    delivered = [h.uid for h in store.hits]
    assert len(delivered) == len(set(delivered))
    assert acked <= set(delivered)
    # Only appends in flight at the kill may be there without an acknowledgement.
    assert len(set(delivered) - acked) <= 32
    # The dead writer's open segment was unlocked by its death and deleted too.
    assert_consumed(directory)


def test_a_consumer_killed_between_store_and_checkpoint_gets_its_batch_delivered_again(
    tmp_path: Path, procs: list[Proc]
) -> None:
    directory = tmp_path / "journal"
    hits = [make_hit(i) for i in range(1000)]
    with JournalWriter(directory, max_segment_bytes=20_000) as writer:
        for start in range(0, 1000, 50):
            writer.append_many(hits[start : start + 50])
    log = tmp_path / "stored.log"
    consumer = Proc(
        "journal_consumer_proc.py",
        str(directory),
        str(log),
        "--batch-size",
        "100",
        "--hang-at-store",
        "3",
    )
    procs.append(consumer)
    consumer.wait_for(lambda: "stored" in consumer.lines)
    consumer.kill()
    stored_before = log.read_text().split()
    assert len(stored_before) == 300
    store = Collect()
    JournalConsumer(directory, store).consume_available()
    delivered = [h.uid for h in store.hits]
    assert len(delivered) == len(set(delivered))
    assert set(delivered) | set(stored_before) == {h.uid for h in hits}
    # The third batch was stored but never checkpointed: it comes again...
    assert set(stored_before[200:]) <= set(delivered)
    # ...while the two batches checkpointed before it do not.
    assert not set(stored_before[:200]) & set(delivered)
    assert sorted(p.name for p in directory.iterdir()) == []


def test_writers_and_consumers_in_parallel_deliver_every_hit_once(
    tmp_path: Path, procs: list[Proc]
) -> None:
    directory = tmp_path / "journal"
    stop = tmp_path / "stop"
    segment_options = ["--segment-bytes", "16384", "--segment-age", "0.1"]
    logs = [tmp_path / "consumer-a.log", tmp_path / "consumer-b.log"]
    consumers = [
        Proc(
            "journal_consumer_proc.py",
            str(directory),
            str(log),
            "--batch-size",
            "50",
            "--store-delay",
            "0.002",
            "--stop-file",
            str(stop),
        )
        for log in logs
    ]
    procs.extend(consumers)
    for consumer in consumers:
        consumer.wait_for(lambda c=consumer: "ready" in c.lines)  # type: ignore[misc]
    steady = Proc("journal_writer_proc.py", str(directory), "--count", "1500", *segment_options)
    doomed = Proc("journal_writer_proc.py", str(directory), *segment_options)
    procs.extend([steady, doomed])
    doomed.wait_for(lambda: len(doomed.lines) >= 1000)
    doomed.kill()
    assert steady.finish() == 0
    assert steady.lines[-1] == "done"
    stop.touch()
    for consumer in consumers:
        assert consumer.finish() == 0
    delivered = [uid for log in logs for uid in log.read_text().split()]
    per_consumer = [len(log.read_text().split()) for log in logs]
    acked = steady.acked() | doomed.acked()
    assert len(steady.acked()) == 1500
    # Each consumer had a share, and no segment was read by both.
    assert all(count > 0 for count in per_consumer), per_consumer
    assert len(delivered) == len(set(delivered))
    assert acked <= set(delivered)
    assert len(set(delivered) - acked) <= 16
    assert_consumed(directory)
