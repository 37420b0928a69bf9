"""GET /metrics: who may scrape, and figures that follow what the product does."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
import pytest_asyncio

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.metrics import IngestLag, set_lag_source
from mailbeacon.models import MailboxConnection, SyncState
from mailbeacon.runtime import Runtime
from tests.client import make_client
from tests.factories.accounts import make_smtp_sender
from tests.factories.hits import THUNDERBIRD
from tests.factories.mail import make_message
from tests.scrape import sample, scrape, scraped

OUTSIDE = ("198.51.100.7", 1234)
TOKEN = "scrape-me-7f3a"


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    application = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"METRICS_TOKEN": TOKEN}))
    )
    await application.ingest.start()
    yield application
    await application.ingest.stop()
    application.runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_pixel_moves_acknowledged_and_stored_hits(app: MailbeaconApp) -> None:
    database = app.runtime.database
    with database.unit_of_work() as s:
        message, copies = make_message(s, make_smtp_sender(s, port=25))
        token = app.runtime.codec.mint_open_token(copies[0].id)
        message_id = message.id
    assert message_id

    acknowledged = await scraped(app, "mailbeacon_hits_acknowledged_total", kind="open")
    human = await scraped(app, "mailbeacon_hits_stored_total", label="human")
    batches = await scraped(app, "mailbeacon_ingest_batch_hits_count")

    async with make_client(app) as c:
        r = await c.get(f"/t/o/{token}.gif", headers={"user-agent": THUNDERBIRD})
    assert r.status_code == 200  # answered once stored (make_client waits for the consumer)

    assert await scraped(app, "mailbeacon_hits_acknowledged_total", kind="open") == (
        acknowledged + 1
    )
    assert await scraped(app, "mailbeacon_hits_stored_total", label="human") == human + 1
    assert await scraped(app, "mailbeacon_ingest_batch_hits_count") >= batches + 1


@pytest.mark.asyncio
async def test_an_invalid_pixel_is_answered_but_not_counted(app: MailbeaconApp) -> None:
    before = await scraped(app, "mailbeacon_hits_acknowledged_total", kind="open")
    async with make_client(app) as c:
        r = await c.get("/t/o/not-a-token.gif")
    assert r.status_code == 200
    assert await scraped(app, "mailbeacon_hits_acknowledged_total", kind="open") == before


@pytest.mark.asyncio
async def test_loopback_scrapes_without_a_token(app: MailbeaconApp) -> None:
    r = await scrape(app)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain; version=")
    for name in (
        "mailbeacon_hits_acknowledged",
        "mailbeacon_hits_stored",
        "mailbeacon_ingest_batch_hits",
        "mailbeacon_sends",
        "mailbeacon_webhook_deliveries",
    ):
        assert f"# TYPE {name}" in r.text


@pytest.mark.parametrize("client", [OUTSIDE, ("2001:db8::5", 1234)])
@pytest.mark.asyncio
async def test_another_machine_without_the_token_is_refused(
    app: MailbeaconApp, client: tuple[str, int]
) -> None:
    r = await scrape(app, client)
    assert r.status_code == 403
    assert "mailbeacon_" not in r.text


@pytest.mark.asyncio
async def test_another_machine_with_the_token_scrapes(app: MailbeaconApp) -> None:
    r = await scrape(app, OUTSIDE, authorization=f"Bearer {TOKEN}")
    assert r.status_code == 200
    assert "# TYPE mailbeacon_hits_acknowledged_total counter" in r.text


@pytest.mark.parametrize(
    "authorization",
    [f"Bearer {TOKEN}x", f"Basic {TOKEN}", "Bearer ", TOKEN, f"Bearer {TOKEN[:-1]}"],
)
@pytest.mark.asyncio
async def test_a_wrong_token_is_refused(app: MailbeaconApp, authorization: str) -> None:
    r = await scrape(app, OUTSIDE, authorization=authorization)
    assert r.status_code == 403


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded", "x-real-ip"])
@pytest.mark.asyncio
async def test_loopback_relayed_by_a_proxy_is_not_this_machine(
    app: MailbeaconApp, header: str
) -> None:
    # A reverse proxy on this machine connects from loopback for everyone it relays.
    r = await scrape(app, **{header: "198.51.100.7"})
    assert r.status_code == 403
    relayed_with_token = await scrape(app, authorization=f"Bearer {TOKEN}", **{header: "x"})
    assert relayed_with_token.status_code == 200


@pytest.mark.asyncio
async def test_without_a_token_set_only_loopback_scrapes(settings: Settings) -> None:
    plain = MailbeaconApp(Runtime.from_settings(settings))
    try:
        assert (await scrape(plain, OUTSIDE, authorization="Bearer ")).status_code == 403
        assert (await scrape(plain, ("::1", 1))).status_code == 200
    finally:
        plain.runtime.database.dispose()


@pytest.mark.asyncio
async def test_other_methods_are_refused(app: MailbeaconApp) -> None:
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
        r = await c.post("/metrics")
    assert r.status_code == 405


@pytest.mark.asyncio
async def test_sync_state_comes_from_the_database(app: MailbeaconApp) -> None:
    database = app.runtime.database
    success = utcnow().replace(microsecond=0) - timedelta(minutes=5)
    with database.unit_of_work() as s:
        for i, failures in enumerate((0, 0, 3)):
            user = make_smtp_sender(s, port=25, email=f"u{i}@example.com")
            mailbox = s.query(MailboxConnection).filter_by(user_id=user.id).one()
            s.add(
                SyncState(
                    mailbox_connection_id=mailbox.id,
                    failures=failures,
                    last_success_at=success - timedelta(hours=i),
                )
            )
    text = (await scrape(app)).text
    assert sample(text, "mailbeacon_sync_mailboxes", state="ok") == 2
    assert sample(text, "mailbeacon_sync_mailboxes", state="failing") == 1
    assert sample(text, "mailbeacon_sync_last_success_timestamp_seconds") == pytest.approx(
        success.timestamp()
    )


@pytest.mark.asyncio
async def test_the_lag_gauges_read_the_registered_source(app: MailbeaconApp) -> None:
    try:
        set_lag_source(lambda: IngestLag(records=42, seconds=1.5))
        text = (await scrape(app)).text
        assert sample(text, "mailbeacon_ingest_lag_records") == 42
        assert sample(text, "mailbeacon_ingest_lag_seconds") == 1.5

        def broken() -> IngestLag:
            raise OSError("journal folder gone")

        set_lag_source(broken)
        r = await scrape(app)
        # The scrape still answers, without the gauge it could not read.
        assert r.status_code == 200 and "mailbeacon_ingest_lag_records" not in r.text
        assert "mailbeacon_hits_acknowledged_total" in r.text
    finally:
        set_lag_source(None)


_COUNT_IN_A_PROCESS = """
from mailbeacon.kit import metrics
metrics.SENDS.labels("sent").inc({n})
"""
_RENDER = """
import sys
from mailbeacon.kit import metrics
sys.stdout.write(metrics.render().decode())
"""


def test_several_processes_add_up_in_multiprocess_mode(tmp_path: Path) -> None:
    # serve --workers N: each worker counts in its own file; any of them reports the sum.
    shared = tmp_path / "metrics"
    shared.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(shared)}
    for n in (2, 5):
        subprocess.run([sys.executable, "-c", _COUNT_IN_A_PROCESS.format(n=n)], env=env, check=True)
    out = subprocess.run(
        [sys.executable, "-c", _RENDER], env=env, check=True, capture_output=True, text=True
    ).stdout
    assert sample(out, "mailbeacon_sends_total", outcome="sent") == 7
