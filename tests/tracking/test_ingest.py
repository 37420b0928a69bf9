"""Journal-first ingest: the edge answers from the journal, a consumer stores it exactly once.

Database outages, a consumer that dies between its commit and its checkpoint,
a journal left by a killed process, shutdown, refused hits, the spool of an
earlier version, several writers and consumers on one journal, live updates.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import json
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import RecipientCopy, TrackingEvent
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.ingest import REJECTED_FILE, Ingest
from mailbeacon.tracking.journal import SEGMENT_SUFFIX, JournalConsumer, JournalWriter
from mailbeacon.tracking.journal_records import HEADER_SIZE, decode_records
from tests.factories.accounts import make_user
from tests.factories.mail import make_message

# Nothing listens on port 1: connections are refused at once, as when the
# database server is down.
UNREACHABLE = "postgresql://nobody@127.0.0.1:1/none"


def seed(db: Database, n: int = 1) -> list[int]:
    with db.unit_of_work() as s:
        _, copies = make_message(s, make_user(s), recipients=tuple(f"r{i}@x.org" for i in range(n)))
        return [c.id for c in copies]


def stored(db: Database) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(TrackingEvent)) or 0)


def stored_uids(db: Database) -> list[str]:
    with db.sessions() as s:
        return list(s.scalars(select(TrackingEvent.uid)))


def open_count(db: Database, copy_id: int) -> int:
    with db.sessions() as s:
        copy = s.get(RecipientCopy, copy_id)
        assert copy is not None
        return copy.open_count


_readers = itertools.count()


def hit(copy_id: int) -> Hit:
    # Each hit from its own reader, so that none is a duplicate of another.
    reader = next(_readers) % 250
    return Hit(
        uid=uuid.uuid4().hex,
        kind="open",
        copy_id=copy_id,
        link_position=None,
        occurred_at=time.time(),
        user_agent=f"Thunderbird/{reader}.0",
        ip_prefix=f"198.51.{reader}.0/24",
        network=None,
        is_head=False,
        prefetch_hint=None,
        viewer_user_id=None,
    )


def journal_hits(directory: Path) -> list[Hit]:
    """The hits the journal's segments hold, read without consuming them."""
    found: list[Hit] = []
    for path in sorted(directory.glob(f"*{SEGMENT_SUFFIX}")):
        data = path.read_bytes()
        decode_records(data, HEADER_SIZE, len(data), 1 << 30, found)
    return found


async def wait_for(check: object, seconds: float = 30) -> None:
    assert callable(check)
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.05)


@pytest.mark.asyncio
async def test_the_edge_answers_once_the_hit_is_in_the_journal_without_the_database(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    # No consumer in this process (RUN_INGEST off): the answer owes nothing to the database.
    runtime = Runtime.from_settings(settings.model_copy(update={"RUN_INGEST": False}))
    app = MailbeaconApp(runtime)
    await app.ingest.start()
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
            r = await c.get(f"/t/o/{runtime.codec.mint_open_token(copy_id)}.gif")
        assert r.status_code == 200
        (recorded,) = journal_hits(settings.journal_dir)
        assert (recorded.copy_id, recorded.kind, recorded.ip_prefix) == (
            copy_id,
            "open",
            "192.0.2.0/24",
        )
        assert stored(database) == 0
    finally:
        await app.ingest.stop()
    # A consumer elsewhere (here: `mailbeacon ingest --once`'s pass) stores it.
    consumer = runtime.make_ingest(consume=True)
    assert consumer.consume_once() == 1
    assert stored_uids(database) == [recorded.uid]
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_edge_keeps_answering_with_the_database_down_and_the_consumer_catches_up(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings.model_copy(update={"INGEST_RETRY_SECONDS": 0.2}))
    app = MailbeaconApp(runtime)
    real_db = runtime.database
    runtime.pipeline.database = Database(UNREACHABLE)  # the database goes away
    await app.ingest.start()
    codec = runtime.codec
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
            pixels = await asyncio.gather(
                *(
                    c.get(
                        f"/t/o/{codec.mint_open_token(copy_id)}.gif",
                        headers={"user-agent": f"Thunderbird/{i}.0"},
                    )
                    for i in range(25)
                )
            )
            click = await c.get(
                f"/t/c/{codec.mint_click_token(copy_id, 0, 'https://example.com/a')}"
            )
        assert all(p.status_code == 200 and len(p.content) == 43 for p in pixels)
        assert click.status_code == 302 and click.headers["location"] == "https://example.com/a"
        # Acknowledged means durable: all 26 are in the journal, none in the database.
        assert len(journal_hits(settings.journal_dir)) == 26
        await wait_for(lambda: not app.ingest.database_up)
        assert stored(real_db) == 0

        runtime.pipeline.database.dispose()
        runtime.pipeline.database = real_db  # the database comes back
        assert await app.ingest.settle()
        assert stored(real_db) == 26
        assert open_count(real_db, copy_id) == 25
        assert app.ingest.database_up
    finally:
        await app.ingest.stop()
    # Closed and consumed: nothing is left in the journal, and nothing was stored twice.
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))
    assert len(set(stored_uids(real_db))) == stored(real_db) == 26
    real_db.dispose()


def test_a_consumer_dying_between_its_commit_and_its_checkpoint_stores_nothing_twice(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    hits = [hit(copy_id) for _ in range(5)]
    with JournalWriter(settings.journal_dir) as writer:
        writer.append_many(hits)

    def commit_then_die(batch: list[Hit]) -> None:
        runtime.store_journal_batch(batch)
        raise RuntimeError("killed before the checkpoint")

    with pytest.raises(RuntimeError):
        JournalConsumer(settings.journal_dir, commit_then_die).consume_available()
    assert stored(database) == 5
    ingest = runtime.make_ingest()
    assert ingest.consume_once() == 5  # delivered again...
    assert stored(database) == 5  # ...and skipped by uid
    assert open_count(database, copy_id) == 5
    assert ingest.stats == {"stored": 0, "duplicates": 5, "rejected": 0, "failed_passes": 0}
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_journal_left_by_a_killed_process_is_stored_on_start(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    hits = [hit(copy_id) for _ in range(3)]
    with JournalWriter(settings.journal_dir) as writer:
        writer.append_many(hits)
    # The process died inside a write: a torn record nobody was told had succeeded.
    (segment,) = settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}")
    with segment.open("ab") as fh:
        fh.write(b"\xfbMBR\x40\x00\x00\x00torn")
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    try:
        assert await ingest.settle()
        assert sorted(stored_uids(database)) == sorted(h.uid for h in hits)
    finally:
        await ingest.stop()
    assert not segment.exists()
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_graceful_shutdown_stores_every_acknowledged_hit(
    settings: Settings, database: Database
) -> None:
    copy_ids = seed(database, 10)
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    acknowledged = [ingest.record(hit(copy_ids[i % 10])) for i in range(500)]
    await asyncio.gather(*acknowledged)
    await ingest.stop()  # no settle: stopping stores what the journal holds
    assert stored(database) == 500
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))
    runtime.database.dispose()


def test_figures_change_in_the_same_transaction_as_the_events(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    first = hit(copy_id)
    runtime.write_batch([first], False)
    # A batch that fails (here: a uid already stored) leaves neither its events
    # nor its figures behind.
    with pytest.raises(IntegrityError):
        runtime.write_batch([hit(copy_id), hit(copy_id), first], False)
    assert stored(database) == 1
    assert open_count(database, copy_id) == 1
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_hit_the_database_refuses_does_not_hold_back_the_others(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    poison = hit(copy_id)

    def store(batch: list[Hit]) -> BatchResult:
        # As the database refuses a value it cannot hold (not: is away).
        if any(h.uid == poison.uid for h in batch):
            raise ValueError("refused")
        return runtime.store_journal_batch(batch)

    ingest = Ingest(settings.journal_dir, store)
    await ingest.start()
    try:
        await asyncio.gather(
            ingest.record(hit(copy_id)), ingest.record(poison), ingest.record(hit(copy_id))
        )
        assert await ingest.settle()
    finally:
        await ingest.stop()
    assert stored(database) == 2
    assert ingest.database_up and ingest.stats["rejected"] == 1
    (line,) = (settings.journal_dir / REJECTED_FILE).read_text().splitlines()
    assert Hit.from_json(json.loads(line)["hit"]).uid == poison.uid
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_the_spool_of_an_earlier_version_is_moved_into_the_journal_and_stored(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    spool = settings.legacy_spool_dir
    spool.mkdir(parents=True)
    hits = [hit(copy_id) for _ in range(4)]
    (spool / "hits-41-ab12cd34.jsonl").write_text(
        "".join(h.to_json() + "\n" for h in hits[:3])
        + '{"uid": "cut off by a full disk"\n'
        + '{"uid": "partial'  # the unterminated tail of a write a crash cut short
    )
    (spool / "hits-42-ef56ab78-0badf00d.replaying").write_text(hits[3].to_json() + "\n")
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    try:
        assert await ingest.settle()
    finally:
        await ingest.stop()
    assert sorted(stored_uids(database)) == sorted(h.uid for h in hits)
    assert not [p for p in spool.iterdir() if p.suffix in (".jsonl", ".replaying")]
    assert "cut off by a full disk" in (spool / REJECTED_FILE).read_text()
    runtime.database.dispose()


def test_two_writers_and_two_consumers_on_one_journal_store_each_hit_once(
    settings: Settings, database: Database
) -> None:
    copy_ids = seed(database, 20)
    runtime = Runtime.from_settings(settings)
    journal = settings.journal_dir
    writers = [JournalWriter(journal, max_segment_bytes=64 << 10) for _ in range(2)]
    sent: list[list[Hit]] = [[], []]
    stop = threading.Event()
    consumers = [
        JournalConsumer(journal, runtime.store_journal_batch, batch_size=200) for _ in range(2)
    ]
    threads = [
        threading.Thread(target=c.run, args=(stop,), kwargs={"poll_interval": 0.01})
        for c in consumers
    ]

    def write(n: int) -> None:
        for i in range(20):
            batch = [hit(copy_ids[(i + j) % 20]) for j in range(50)]
            writers[n].append_many(batch)
            sent[n].extend(batch)

    for t in threads:
        t.start()
    producers = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for t in producers:
        t.start()
    for t in producers:
        t.join()
    for w in writers:
        w.close()
    deadline = time.monotonic() + 60
    while stored(database) < 2000 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join()
    uids = stored_uids(database)
    assert len(uids) == len(set(uids)) == 2000
    assert set(uids) == {h.uid for h in sent[0] + sent[1]}
    # Segments from both writers, each read by one consumer at a time, deleted once read.
    assert sum(c.stats["delivered"] for c in consumers) == 2000
    assert sum(c.stats["deleted_segments"] for c in consumers) >= 4
    assert not list(journal.glob(f"*{SEGMENT_SUFFIX}"))
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_hit_wakes_the_senders_open_pages_within_a_second_of_the_answer(
    settings: Settings, database: Database
) -> None:
    with database.unit_of_work() as s:
        user = make_user(s)
        message, (copy,) = make_message(s, user)
        user_id, message_id, copy_id = user.id, message.id, copy.id
    runtime = Runtime.from_settings(settings)
    app = MailbeaconApp(runtime)
    await app.ingest.start()
    await runtime.live.start()
    subscription = runtime.live.subscribe(user_id)
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
            r = await c.get(
                f"/t/o/{runtime.codec.mint_open_token(copy_id)}.gif",
                headers={"user-agent": "Thunderbird/128.0"},
            )
        assert r.status_code == 200
        # The Mail tab's stream waits on exactly this (notify/live.py).
        activity = await subscription.next(1.0)
        assert activity is not None and message_id in activity.message_ids
    finally:
        runtime.live.unsubscribe(subscription)
        await runtime.live.stop()
        await app.ingest.stop()
        runtime.database.dispose()


def test_mailbeacon_ingest_once_stores_what_the_journal_holds(
    settings: Settings, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mailbeacon.cli import main

    copy_ids = seed(database, 3)
    hits = [hit(copy_ids[i % 3]) for i in range(30)]
    with JournalWriter(settings.journal_dir) as writer:
        writer.append_many(hits)
    monkeypatch.setenv("MAILBEACON_DATABASE_URL", settings.database_url())
    # The command sets it from --data-dir for what it starts; restored after the test.
    monkeypatch.setenv("MAILBEACON_DATA_DIR", str(settings.DATA_DIR))
    try:
        assert main(["ingest", "--once", "--data-dir", str(settings.DATA_DIR)]) == 0
    finally:
        # The command freezes its process's heap at start, here the test session's.
        gc.unfreeze()
    assert sorted(stored_uids(database)) == sorted(h.uid for h in hits)
    assert not list(settings.journal_dir.glob(f"*{SEGMENT_SUFFIX}"))


def test_the_consumer_takes_larger_batches_on_postgresql_unless_told(
    settings: Settings, database: Database
) -> None:
    # On SQLite a batch holds the one write lock every other writer waits for.
    expected = 5000 if database.is_sqlite else 20000
    for given, size in ((None, expected), (300, 300)):
        runtime = Runtime.from_settings(settings.model_copy(update={"INGEST_BATCH_MAX": given}))
        try:
            assert runtime.make_ingest(consume=True).consumer.batch_size == size
        finally:
            runtime.database.dispose()


def test_the_lag_counts_what_the_journal_holds_past_the_checkpoints(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    assert ingest.lag() == (0, 0.0)
    early = hit(copy_id)
    early.occurred_at -= 30
    with JournalWriter(settings.journal_dir) as writer:
        writer.append_many([early, *(hit(copy_id) for _ in range(4))])
    records, seconds = ingest.lag()
    assert records == 5 and 30 <= seconds < 120
    # A consumer stored the first two and checkpointed, then died before the rest.
    taken: list[Hit] = []

    def store_two_then_die(batch: list[Hit]) -> None:
        if not taken:
            taken.extend(batch)
            runtime.store_journal_batch(batch)
            return
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        JournalConsumer(settings.journal_dir, store_two_then_die, batch_size=2).consume_available()
    assert ingest.lag()[0] == 3
    ingest.consume_once()
    assert ingest.lag() == (0, 0.0)
    runtime.database.dispose()
