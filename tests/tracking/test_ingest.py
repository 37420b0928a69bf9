"""Durable ingest: database outages, the spool, exactly-once replay, shutdown flush."""

from __future__ import annotations

import asyncio
import itertools
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
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.spool import Spool
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


def spooled_lines(settings: Settings) -> int:
    return sum(p.read_text().count("\n") for p in settings.spool_dir.glob("*") if p.is_file())


@pytest.mark.asyncio
async def test_edge_keeps_answering_with_the_database_down_and_replays_exactly_once(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings.model_copy(update={"INGEST_RETRY_SECONDS": 0.2}))
    app = MailbeaconApp(runtime)
    await app.ingest.start()
    real_db = runtime.database
    codec = runtime.codec
    transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 1234))
    try:
        runtime.pipeline.database = Database(UNREACHABLE)  # the database goes away
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
        assert not app.ingest.database_up
        # Acknowledged means durable: all 26 are on disk, none in the database.
        assert spooled_lines(settings) == 26
        assert stored(real_db) == 0

        runtime.pipeline.database.dispose()
        runtime.pipeline.database = real_db  # the database comes back
        for _ in range(100):
            if stored(real_db) == 26 and not Spool(settings.spool_dir).has_pending():
                break
            await asyncio.sleep(0.1)
        assert stored(real_db) == 26
        assert open_count(real_db, copy_id) == 25
        assert not Spool(settings.spool_dir).has_pending()
    finally:
        await app.ingest.stop()
        real_db.dispose()


@pytest.mark.asyncio
async def test_a_replay_cut_short_after_commit_does_not_count_twice(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    hits = [hit(copy_id) for _ in range(5)]
    # A process spooled these, replayed them, and died before removing its file.
    Spool(settings.spool_dir).append(hits)
    runtime.write_batch(hits, True)
    assert stored(database) == 5
    ingest = runtime.make_ingest()
    await ingest.start()
    await ingest.stop()
    assert stored(database) == 5
    assert open_count(database, copy_id) == 5
    assert not Spool(settings.spool_dir).has_pending()
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_spool_left_by_a_dead_process_is_replayed_on_start(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    Spool(settings.spool_dir).append([hit(copy_id) for _ in range(3)])
    # A half-written last line (the process died inside write) was never acknowledged.
    with next(settings.spool_dir.glob("*.jsonl")).open("a") as fh:
        fh.write('{"uid": "partial')
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    assert await ingest.replay_spool() == 3
    await ingest.stop()
    assert stored(database) == 3
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_graceful_shutdown_flushes_every_queued_hit(
    settings: Settings, database: Database
) -> None:
    copy_ids = seed(database, 10)
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    pending = [asyncio.create_task(ingest.record(hit(copy_ids[i % 10]))) for i in range(500)]
    await asyncio.sleep(0)  # queued, not yet written
    await ingest.stop()
    await asyncio.gather(*pending)
    assert stored(database) == 500
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


def test_spool_append_survives_a_concurrent_claim(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.append([hit(1)])
    with spool.claim() as claimed:
        assert claimed is not None and len(claimed[1]) == 1
        spool.append([hit(2)])  # goes to a new file, not the claimed one
    with spool.claim() as claimed:
        assert claimed is not None and [h.copy_id for h in claimed[1]] == [2]
    assert not spool.has_pending()


@pytest.mark.asyncio
async def test_an_unreadable_spool_line_is_set_aside_and_the_rest_replayed(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    spool = Spool(settings.spool_dir)
    spool.append([hit(copy_id)])
    path = next(settings.spool_dir.glob("*.jsonl"))
    with path.open("a") as fh:
        fh.write('{"uid": "cut off by a full disk"\n')
    spool.append([hit(copy_id), hit(copy_id)])
    Spool(settings.spool_dir).append([hit(copy_id)])  # another process's file
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    assert await ingest.replay_spool() == 4
    await ingest.stop()
    assert stored(database) == 4
    assert ingest.database_up
    rejected = (settings.spool_dir / "rejected.hits").read_text()
    assert "cut off by a full disk" in rejected
    assert not Spool(settings.spool_dir).has_pending()
    runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_hit_the_database_refuses_does_not_hold_back_the_others(
    settings: Settings, database: Database
) -> None:
    (copy_id,) = seed(database)
    runtime = Runtime.from_settings(settings)
    ingest = runtime.make_ingest()
    await ingest.start()
    first = hit(copy_id)
    await ingest.record(first)
    again = hit(copy_id)
    again.uid = first.uid  # refused: that uid is stored already
    await asyncio.gather(
        ingest.record(hit(copy_id)), ingest.record(again), ingest.record(hit(copy_id))
    )
    await ingest.stop()
    assert stored(database) == 3
    assert ingest.database_up and ingest.stats["spooled"] == 0
    assert first.uid in (settings.spool_dir / "rejected.hits").read_text()
    runtime.database.dispose()
