"""Starting with the database down: links keep working, pages say so, nothing is lost.

Before, `serve` ran its migrations first and exited with a traceback when
PostgreSQL was unreachable, so restarting during an outage broke every tracked
link of every email ever sent. The test runs a PostgreSQL of its own, stops it,
starts the server, hits it, and starts the database again.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, select, text

from mailbeacon.config import Settings
from mailbeacon.db import normalise_url
from mailbeacon.migrate import alembic_config, upgrade
from mailbeacon.models import TrackingEvent
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import THUNDERBIRD
from tests.factories.mail import send_mail
from tests.own_postgres import OwnPostgres, own_postgres_server
from tests.server import BIN, free_port, get, server_env, serving

pytestmark = pytest.mark.slow

FIRST_REVISION = "49c02ea7684f"


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    with own_postgres_server() as server:
        yield server


def _stored(url: str) -> tuple[int, int, str]:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            count = conn.scalar(select(func.count()).select_from(TrackingEvent)) or 0
            uids = conn.scalar(select(func.count(func.distinct(TrackingEvent.uid)))) or 0
            version = conn.scalar(text("SELECT version_num FROM alembic_version")) or ""
        return count, uids, version
    finally:
        engine.dispose()


def _wait(what: str, check: object, timeout: float = 60) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_serve_starts_with_the_database_down_keeps_links_working_and_catches_up(
    own_postgres: OwnPostgres, tmp_path: Path
) -> None:
    port = free_port()
    own_postgres.start()
    upgrade(own_postgres.url)
    settings = Settings(
        DATA_DIR=tmp_path / "data",
        DATABASE_URL=own_postgres.url,
        BASE_URL=f"http://127.0.0.1:{port}",
    )
    runtime = Runtime.from_settings(settings)
    sally = make_demo_sender(runtime.database)
    sent = send_mail(runtime.database, runtime, sally, ("ann@example.org", "bob@example.com"))
    runtime.database.dispose()
    # The schema goes back to its first revision: what the server finds when the
    # database returns must be migrated before any hit is written into it.
    command.downgrade(alembic_config(own_postgres.url), FIRST_REVISION)
    own_postgres.stop()
    env = server_env(settings.DATA_DIR, own_postgres.url, port, DEMO_SMTP_PORT="0")

    # A command that needs the database says so in one line.
    done = subprocess.run([str(BIN), "events", "--count"], env=env, capture_output=True, timeout=60)
    assert done.returncode == 1
    assert done.stderr.decode().count("\n") == 1
    assert b"is unavailable" in done.stderr and b"Traceback" not in done.stderr

    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.com"]
    pixels = [f"/t/o/{runtime.codec.mint_open_token(c)}.gif" for c in (ann, bob)]
    link = f"/t/c/{runtime.codec.mint_click_token(ann, 0, 'https://example.com/offer')}"
    agent = {"User-Agent": THUNDERBIRD}
    with serving(env, port):
        answered = 0
        for _ in range(5):
            for pixel in pixels:
                status, body = get(port, pixel, agent)
                assert status == 200 and body.startswith(b"GIF89a")
                answered += 1
            status, _ = get(port, link, agent)
            assert status == 302
            answered += 1

        status, page = get(port, "/mail")
        assert status == 503 and b"Database unavailable" in page
        status, api = get(port, "/api/mail")
        assert status == 503 and "unavailable" in json.loads(api)["error"]
        assert json.loads(get(port, "/healthz")[1])["database"] == "down"

        own_postgres.start()
        # Migrated and serving again, without a restart: the API now asks who we are.
        _wait("the web app to come back", lambda: get(port, "/api/me")[0] == 401)
        _wait("the journal's hits", lambda: _stored(own_postgres.url)[0] >= answered)
        time.sleep(1.5)  # a second consumer pass would store them twice, if it could
        count, distinct, version = _stored(own_postgres.url)
    assert (count, distinct) == (answered, answered)
    heads = ScriptDirectory.from_config(alembic_config(own_postgres.url)).get_heads()
    assert [version] == heads
