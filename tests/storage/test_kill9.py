"""kill -9 in the middle of the load: every hit the edge acknowledged is stored exactly once.

A real `mailbeacon serve` on loopback takes pixels and clicks from many
connections at once; once a few hundred have been answered it is killed with
SIGKILL (no shutdown of any kind), started again, and the database must hold
every acknowledged hit (a 200 with the GIF, or a 302, that the client received)
once, and no hit twice. Each request carries its own User-Agent, so each stored
event names the request it came from.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from mailbeacon.config import Settings
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_user
from tests.factories.mail import make_message
from tests.server import BIN, agent, free_port, get, server_env, serving, stored_agents

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

REQUESTS = 1500
KILL_AFTER = 300
CONNECTIONS = 32


def start_server(env: dict[str, str], port: int, log: Path, server: str) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # A session of its own: the kill takes every process of the server at once
        # (granian answers from a worker process it spawns).
        proc = subprocess.Popen(
            [str(BIN), "serve", "--port", str(port), "--log-level", "warning", "--server", server],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    deadline = time.monotonic() + 30
    while True:
        try:
            get(port, "/healthz")
            return proc
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(log.read_text()) from None
            time.sleep(0.1)


@pytest.mark.parametrize("server", ["uvicorn", "granian"])
async def test_every_acknowledged_hit_is_stored_once_across_a_kill_9(
    tmp_path: Path, db_url: str, server: str
) -> None:
    port = free_port()
    settings = Settings(
        DATA_DIR=tmp_path / "data", DATABASE_URL=db_url, BASE_URL=f"http://127.0.0.1:{port}"
    )
    runtime = Runtime.from_settings(settings)
    database = runtime.database
    with database.unit_of_work() as s:
        _, copies = make_message(
            s, make_user(s), recipients=tuple(f"r{i}@example.org" for i in range(10))
        )
        copy_ids = [c.id for c in copies]
    codec = runtime.codec
    paths = [
        f"/t/o/{codec.mint_open_token(copy_ids[i % 10])}.gif"
        if i % 3
        else f"/t/c/{codec.mint_click_token(copy_ids[i % 10], 0, 'https://example.com/offer')}"
        for i in range(REQUESTS)
    ]
    env = server_env(
        settings.DATA_DIR, db_url, port, DEMO_SMTP_PORT="0", RUN_WORKER="false", RUN_SYNC="false"
    )
    proc = start_server(env, port, tmp_path / "first.log", server)
    acknowledged: set[int] = set()
    failed = 0
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    killed = asyncio.Event()

    async def one(client: httpx.AsyncClient, i: int) -> None:
        nonlocal failed
        try:
            r = await client.get(paths[i], headers={"user-agent": agent(i)})
        except httpx.HTTPError as exc:
            failed += 1
            errors[type(exc).__name__] += 1
            return
        statuses[r.status_code] += 1
        if (r.status_code == 200 and len(r.content) == 43) or (
            r.status_code == 302 and r.headers["location"] == "https://example.com/offer"
        ):
            acknowledged.add(i)
        if len(acknowledged) >= KILL_AFTER and not killed.is_set():
            killed.set()
            os.killpg(proc.pid, signal.SIGKILL)

    numbers = iter(range(REQUESTS))

    async def connection() -> None:
        # One keep-alive connection sending its requests one after the other.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for i in numbers:
                await one(client, i)

    try:
        await asyncio.gather(*(connection() for _ in range(CONNECTIONS)))
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    # Killed in the middle of the load: answers before it, failures after it.
    assert killed.is_set() and proc.returncode == -signal.SIGKILL, (statuses, errors)
    assert len(acknowledged) >= KILL_AFTER and failed > 0

    with serving(env, port, server=server):
        deadline = time.monotonic() + 60
        wanted = {agent(i) for i in acknowledged}
        while missing := wanted - set(stored_agents(database)):
            assert time.monotonic() < deadline, f"{len(missing)} acknowledged hits not stored"
            await asyncio.sleep(0.2)
    found = stored_agents(database)
    assert all(found[agent(i)] == 1 for i in acknowledged)
    assert set(found.values()) == {1}, [a for a, n in found.items() if n > 1]
    # Requests cut off by the kill may have reached the journal without their answer
    # getting out; nothing else is stored.
    assert set(found) <= {agent(i) for i in range(REQUESTS)}
    database.dispose()
