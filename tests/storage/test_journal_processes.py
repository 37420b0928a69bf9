"""Two edge processes and two consumers on one journal and one database, under load.

Two `mailbeacon serve` processes (without consumers) share one data folder and
each write their own journal segments; `mailbeacon ingest` consumers claim the
segments under a lock. One consumer is killed with SIGKILL halfway through and
a third takes its place. Every hit an edge acknowledged must be stored once,
and no hit twice. Each request carries its own User-Agent, so each stored event
names the request it came from. Meanwhile the outbox workers of both `serve`
processes deliver one email to many recipients through the demo mailbox: each
copy must be sent once.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import CopyStatus, DemoMessage, RecipientCopy
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.journal import SEGMENT_SUFFIX
from tests.factories.accounts import PASSWORD, make_user
from tests.factories.mail import make_message, plan
from tests.server import BIN, agent, free_port, server_env, serving, stored_agents

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

REQUESTS = 2000
CONNECTIONS_PER_EDGE = 12
RECIPIENTS = 200


def copies_waiting(database: Database, message_id: int) -> int:
    with database.sessions() as s:
        return len(
            s.scalars(
                select(RecipientCopy.id).where(
                    RecipientCopy.message_id == message_id,
                    RecipientCopy.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]),
                )
            ).all()
        )


def wait_until_running(log: Path) -> None:
    """A consumer told to stop before it has set up its signal handlers dies of the
    signal (-15) rather than stopping cleanly; on a loaded machine the one started
    halfway may still be importing when the hits are all stored."""
    deadline = time.monotonic() + 60
    while b"mailbeacon ingest running" not in log.read_bytes():
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def start_consumer(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([str(BIN), "ingest"], env=env, stdout=out, stderr=subprocess.STDOUT)


async def test_two_edges_and_two_consumers_store_every_acknowledged_hit_once(
    tmp_path: Path, db_url: str
) -> None:
    ports = [free_port(), free_port()]
    demo_port = free_port()
    settings = Settings(DATA_DIR=tmp_path / "data", DATABASE_URL=db_url)
    runtime = Runtime.from_settings(settings)
    database = runtime.database
    with database.unit_of_work() as s:
        _, copies = make_message(
            s, make_user(s), recipients=tuple(f"r{i}@example.org" for i in range(10))
        )
        copy_ids = [c.id for c in copies]
        # An email for the outbox workers to deliver while the hits come in.
        sender = account_service.create_user(
            s, NewUser(email="sally@example.com", password=PASSWORD, organisation="Acme")
        )
        account_service.use_demo_mailbox(s, sender, port=demo_port)
        outgoing = plan(s, runtime, sender, to=[f"o{i}@example.org" for i in range(RECIPIENTS)])
        outgoing_id = outgoing.id
    codec = runtime.codec
    paths = [
        f"/t/o/{codec.mint_open_token(copy_ids[i % 10])}.gif"
        if i % 3
        else f"/t/c/{codec.mint_click_token(copy_ids[i % 10], 0, 'https://example.com/offer')}"
        for i in range(REQUESTS)
    ]
    common = {
        "DEMO_SMTP_PORT": "0",
        "RUN_SYNC": "false",
        "RUN_WORKER": "true",
        # Short segments, so that consumers take turns and delete as they go.
        "JOURNAL_SEGMENT_SECONDS": "0.3",
        "INGEST_BATCH_MAX": "300",
    }
    edge_envs = [
        server_env(settings.DATA_DIR, db_url, port, RUN_INGEST="false", **common) for port in ports
    ]
    # The demo mailbox's SMTP server runs in the first; both outbox workers send to it.
    edge_envs[0]["MAILBEACON_DEMO_SMTP_PORT"] = str(demo_port)
    consumer_env = server_env(settings.DATA_DIR, db_url, ports[0], **common)
    journal = settings.journal_dir
    acknowledged: set[int] = set()
    writers_seen: set[str] = set()
    consumers = [start_consumer(consumer_env, tmp_path / f"ingest-{n}.log") for n in range(2)]
    killed_consumer = False
    try:
        with ExitStack() as stack:
            edges = [
                stack.enter_context(serving(env, port))
                for env, port in zip(edge_envs, ports, strict=True)
            ]
            numbers = iter(range(REQUESTS))

            async def connection(port: int) -> None:
                nonlocal killed_consumer
                async with httpx.AsyncClient(
                    base_url=f"http://127.0.0.1:{port}", timeout=30
                ) as client:
                    for i in numbers:
                        r = await client.get(paths[i], headers={"user-agent": agent(i)})
                        if (r.status_code == 200 and len(r.content) == 43) or (
                            r.status_code == 302
                            and r.headers["location"] == "https://example.com/offer"
                        ):
                            acknowledged.add(i)
                        if i % 50 == 0:
                            writers_seen.update(
                                p.name.split("-")[1] for p in journal.glob(f"*{SEGMENT_SUFFIX}")
                            )
                        if i >= REQUESTS // 2 and not killed_consumer:
                            killed_consumer = True
                            consumers[0].send_signal(signal.SIGKILL)
                            consumers.append(
                                start_consumer(consumer_env, tmp_path / "ingest-2.log")
                            )

            await asyncio.gather(
                *(connection(port) for port in ports for _ in range(CONNECTIONS_PER_EDGE))
            )
            edge_pids = {str(edge.pid) for edge in edges}
            deadline = time.monotonic() + 120
            while unsent := copies_waiting(database, outgoing_id):
                assert time.monotonic() < deadline, f"{unsent} copies not delivered"
                await asyncio.sleep(0.5)
        # The edges have stopped (gracefully): their last segments are closed.
        assert len(acknowledged) == REQUESTS
        assert edge_pids <= writers_seen, (edge_pids, writers_seen)
        wanted = {agent(i) for i in acknowledged}
        deadline = time.monotonic() + 90
        while missing := wanted - set(stored_agents(database)):
            assert time.monotonic() < deadline, f"{len(missing)} acknowledged hits not stored"
            await asyncio.sleep(0.2)
        with database.sessions() as s:
            statuses = Counter(
                s.scalars(
                    select(RecipientCopy.status).where(RecipientCopy.message_id == outgoing_id)
                )
            )
            deliveries = Counter(s.scalars(select(DemoMessage.recipient)))
    finally:
        for n, consumer in enumerate(consumers[1:], start=1):
            if consumer.poll() is None:
                wait_until_running(tmp_path / f"ingest-{n}.log")
        for consumer in consumers:
            if consumer.poll() is None:
                consumer.send_signal(signal.SIGTERM)
        for consumer in consumers:
            consumer.wait(timeout=60)
    assert consumers[0].returncode == -signal.SIGKILL
    assert [c.returncode for c in consumers[1:]] == [0, 0]
    found = stored_agents(database)
    assert all(found[agent(i)] == 1 for i in acknowledged)
    assert set(found.values()) == {1}, [a for a, n in found.items() if n > 1]
    assert not list(journal.glob(f"*{SEGMENT_SUFFIX}"))
    # Both outbox workers ran beside the edges; each copy went out once.
    assert statuses == {CopyStatus.SENT: RECIPIENTS}, statuses
    assert sum(deliveries.values()) == RECIPIENTS and set(deliveries.values()) == {1}
    database.dispose()
