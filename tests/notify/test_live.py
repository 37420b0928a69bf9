"""The live broker: wakes reach the right subscribers, in one process and across processes."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.notify.live import MAX_PAYLOAD_BYTES, LiveBroker, decode_wake, encode_wake
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import hit, record
from tests.factories.mail import send_mail


@given(
    st.dictionaries(
        st.integers(1, 2**40),
        st.one_of(st.none(), st.sets(st.integers(1, 2**50), max_size=300)),
        max_size=80,
    )
)
def test_a_wake_survives_the_notify_payload_whatever_its_size(
    wake: dict[int, set[int] | None],
) -> None:
    payloads = encode_wake(wake)
    assert all(len(p.encode()) < MAX_PAYLOAD_BYTES + 200 for p in payloads)
    assert all(len(p.encode()) < 8000 for p in payloads)
    merged: dict[int, set[int] | None] = {}
    for payload in payloads:
        merged.update(decode_wake(payload))
    assert merged.keys() == wake.keys()
    for user_id, ids in wake.items():
        if ids is None or len(ids) > 200:
            assert merged[user_id] is None  # too many: reload everything
        else:
            assert merged[user_id] == ids


@pytest.mark.parametrize("payload", ["", "null", "[]", '{"u": 3}', '{"u": {"x": [1]}}', "{"])
def test_an_unreadable_payload_wakes_nobody(payload: str) -> None:
    assert decode_wake(payload) == {}


@pytest.mark.asyncio
async def test_publish_from_the_writer_thread_wakes_only_that_users_streams() -> None:
    broker = LiveBroker("sqlite:///unused.db")
    await broker.start()
    sally, tom = broker.subscribe(1), broker.subscribe(2)
    thread = threading.Thread(target=broker.publish, args=({1: {10, 11}},))
    thread.start()
    thread.join()
    await asyncio.sleep(0)  # the loop runs what the thread handed over
    broker.publish({1: {12}})
    activity = await sally.next(2.0)
    assert activity is not None and activity.message_ids == {10, 11, 12}
    assert await tom.next(0.05) is None
    broker.publish({1: None})
    activity = await sally.next(1.0)
    assert activity is not None and activity.everything
    broker.unsubscribe(sally)
    broker.unsubscribe(tom)
    assert broker.subscriber_count == 0
    await broker.stop()


@pytest.mark.asyncio
async def test_stopping_ends_every_stream() -> None:
    broker = LiveBroker("")
    await broker.start()
    sub = broker.subscribe(1)
    await broker.stop()
    activity = await sub.next(1.0)
    assert activity is not None and activity.closed


@pytest_asyncio.fixture
async def two_processes(settings: Settings) -> AsyncIterator[tuple[Runtime, Runtime]]:
    """Two runtimes on one database, as two server processes would have."""
    first, second = Runtime.from_settings(settings), Runtime.from_settings(settings)
    if not first.live.uses_notify:
        pytest.skip("LISTEN/NOTIFY is PostgreSQL's")
    await first.live.start()
    await second.live.start()
    assert first.live.listening and second.live.listening
    yield first, second
    for rt in (first, second):
        await rt.live.stop()
        rt.database.dispose()


@pytest.mark.asyncio
async def test_an_open_written_by_one_process_reaches_a_stream_of_another(
    two_processes: tuple[Runtime, Runtime], database: Database
) -> None:
    writer, reader = two_processes
    sally = make_demo_sender(database)
    tom = make_demo_sender(database, "tom@example.com", name="Tom")
    sent = send_mail(database, writer, sally)
    sallys_stream, toms_stream = reader.live.subscribe(sally), reader.live.subscribe(tom)
    # The writer's own publish does nothing on PostgreSQL: NOTIFY carries the wake.
    await asyncio.to_thread(record, writer, hit(sent.copies["ann@example.org"]))
    activity = await sallys_stream.next(5.0)
    assert activity is not None and activity.message_ids == {sent.message_id}
    assert await toms_stream.next(0.2) is None
    # And the writer's own process hears it the same way, exactly once.
    mine = writer.live.subscribe(sally)
    await asyncio.to_thread(
        record, writer, hit(sent.copies["ann@example.org"], "click", position=0)
    )
    activity = await mine.next(5.0)
    assert activity is not None and activity.message_ids == {sent.message_id}
    assert await mine.next(0.3) is None


@pytest.mark.asyncio
async def test_a_lost_listener_connection_comes_back_and_reloads_every_stream(
    two_processes: tuple[Runtime, Runtime], database: Database
) -> None:
    _, reader = two_processes
    sub = reader.live.subscribe(7)
    with database.engine.connect() as conn:
        conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE query LIKE 'LISTEN mailbeacon%%' AND pid <> pg_backend_pid()"
        )
        conn.commit()
    activity = await sub.next(10.0)
    assert activity is not None and activity.everything
    assert reader.live.stats["reconnects"] >= 1
    json.dumps(reader.live.stats)
