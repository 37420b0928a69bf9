"""The bell's stream, the Sales Assistant and the notification API, through the whole app;
and proof that a colleague in the same organisation gets none of it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import Notification, User
from mailbeacon.runtime import Runtime
from tests.client import csrf_of, make_client, sign_in
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import CHROME, SCANNER
from tests.factories.mail import Sent, send_mail

pytestmark = pytest.mark.asyncio

STREAM_SECONDS = 2.5


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    quick = settings.model_copy(
        update={"LIVE_STREAM_SECONDS": STREAM_SECONDS, "LIVE_HEARTBEAT_SECONDS": 0.5}
    )
    application = MailbeaconApp(Runtime.from_settings(quick))
    await application.ingest.start()
    await application.runtime.live.start()
    yield application
    await application.runtime.live.stop()
    await application.ingest.stop()
    application.runtime.database.dispose()


@pytest_asyncio.fixture
async def sally(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    make_demo_sender(app.runtime.database)
    async with make_client(app) as c:
        c.headers["x-csrf-token"] = await sign_in(c, "sally@example.com")
        yield c


@pytest_asyncio.fixture
async def tom(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    """A colleague: another user of Sally's organisation."""
    make_demo_sender(app.runtime.database, "tom@example.com", name="Tom")
    async with make_client(app, ip="198.51.100.7") as c:
        c.headers["x-csrf-token"] = await sign_in(c, "tom@example.com")
        yield c


def user_id(database: Database, email: str) -> int:
    with database.sessions() as s:
        found = s.scalar(select(User.id).where(User.email == email))
        assert found is not None
        return found


@pytest_asyncio.fixture
async def sent(app: MailbeaconApp, sally: httpx.AsyncClient, database: Database) -> Sent:
    return send_mail(
        database,
        app.runtime,
        user_id(database, "sally@example.com"),
        ("ann@example.org", "bob@example.com"),
        subject="Our pricing",
    )


async def load_pixel(app: MailbeaconApp, copy_id: int, ua: str = CHROME) -> None:
    async with make_client(app, ip="192.0.2.44") as reader:
        token = app.runtime.codec.mint_open_token(copy_id)
        r = await reader.get(f"/t/o/{token}.gif", headers={"user-agent": ua})
        assert r.status_code == 200


def events_of(body: str) -> list[dict[str, Any]]:
    return [
        json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")
    ]


async def test_the_stream_counts_unread_and_names_the_email_as_soon_as_it_is_opened(
    app: MailbeaconApp, sally: httpx.AsyncClient, tom: httpx.AsyncClient, sent: Sent
) -> None:
    async def open_soon() -> None:
        await asyncio.sleep(0.4)
        await load_pixel(app, sent.copies["ann@example.org"])

    sallys, toms, _ = await asyncio.gather(
        sally.get("/api/notifications/stream"),
        tom.get("/api/notifications/stream"),
        open_soon(),
    )
    assert sallys.status_code == 200
    assert sallys.headers["content-type"].startswith("text/event-stream")
    assert sallys.headers["cache-control"] == "no-store"
    assert sallys.text.startswith("retry: ")
    events = events_of(sallys.text)
    assert events[0] == {"type": "unread", "count": 0}
    assert {"type": "unread", "count": 1} in events
    assert {"type": "activity", "message_ids": [sent.message_id]} in events
    # The colleague's stream heard nothing of it.
    assert events_of(toms.text) == [{"type": "unread", "count": 0}]
    assert app.runtime.live.subscriber_count == 0  # streams clean up after themselves


async def test_machine_hits_move_the_icons_but_not_the_bell(
    app: MailbeaconApp, sally: httpx.AsyncClient, sent: Sent
) -> None:
    async def scan_soon() -> None:
        await asyncio.sleep(0.4)
        await load_pixel(app, sent.copies["bob@example.com"], ua=SCANNER)

    response, _ = await asyncio.gather(sally.get("/api/notifications/stream"), scan_soon())
    events = events_of(response.text)
    assert {"type": "activity", "message_ids": [sent.message_id]} in events
    assert all(e["count"] == 0 for e in events if e["type"] == "unread")


async def test_the_sales_assistant_feed_and_marking_read(
    app: MailbeaconApp, sally: httpx.AsyncClient, sent: Sent
) -> None:
    await load_pixel(app, sent.copies["ann@example.org"])
    await load_pixel(app, sent.copies["bob@example.com"], ua=SCANNER)
    page = await sally.get("/assistant")
    assert page.status_code == 200
    assert "Sales Assistant" in page.text
    assert "ann@example.org opened “Our pricing”" in page.text
    assert "bob@example.com" not in page.text  # a scanner is no reason to notify
    feed = (await sally.get("/api/notifications")).json()
    assert feed["unread_count"] == 1
    (item,) = feed["items"]
    assert (item["kind"], item["message_id"], item["read"]) == (
        "first_open",
        sent.message_id,
        False,
    )
    assert (await sally.get("/api/notifications/unread-count")).json() == {"count": 1}

    r = await sally.post(f"/api/notifications/{item['id']}/read")
    assert r.status_code == 200 and r.json() == {"count": 0}
    assert (await sally.get("/api/notifications")).json()["items"][0]["read"] is True

    # The page's forms: open (marks read, goes to the email) and mark all read.
    with app.runtime.database.unit_of_work() as s:
        s.execute(
            Notification.__table__.update().values(read_at=None)  # type: ignore[attr-defined]
        )
    csrf = csrf_of(page.text)
    r = await sally.post(f"/assistant/{item['id']}/open", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["location"] == f"/mail/{sent.message_id}"
    assert (await sally.get("/api/notifications/unread-count")).json() == {"count": 0}
    r = await sally.post("/assistant/read-all", data={"csrf_token": csrf})
    assert r.status_code == 303
    forged = await sally.post(
        "/api/notifications/read-all", headers={"x-csrf-token": "not the token"}
    )
    assert forged.status_code == 403


async def test_the_bells_dropdown_lists_the_latest_and_marks_read_in_place(
    app: MailbeaconApp, sally: httpx.AsyncClient, tom: httpx.AsyncClient, sent: Sent
) -> None:
    await load_pixel(app, sent.copies["ann@example.org"])
    r = await sally.get("/assistant/latest")
    assert r.status_code == 200
    assert '<div class="mb-bell-head" data-unread="1">' in r.text
    assert "ann@example.org opened “Our pricing”" in r.text
    assert 'class="mb-bell-item mb-unread"' in r.text
    assert '<a class="mb-bell-all" href="/assistant">See all</a>' in r.text
    (item,) = (await sally.get("/api/notifications")).json()["items"]
    # The dropdown posts with fetch: no page back. The page's form still redirects.
    r = await sally.post(f"/assistant/{item['id']}/read", headers={"x-requested-with": "fetch"})
    assert r.status_code == 204
    latest = (await sally.get("/assistant/latest")).text
    assert 'data-unread="0"' in latest and "mb-unread" not in latest
    r = await sally.post(f"/assistant/{item['id']}/read")
    assert r.status_code == 303 and r.headers["location"] == "/assistant"
    # A colleague's dropdown has none of it, and cannot mark it.
    assert "Our pricing" not in (await tom.get("/assistant/latest")).text
    assert (await tom.post(f"/assistant/{item['id']}/read")).status_code == 404


async def test_notification_settings_from_the_page_and_the_api(
    app: MailbeaconApp, sally: httpx.AsyncClient, sent: Sent
) -> None:
    page = await sally.get("/assistant")
    csrf = csrf_of(page.text)
    r = await sally.post(
        "/assistant/settings",
        data={"csrf_token": csrf, "quiet_minutes": "15", "notify_tracking": "true"},
    )
    assert r.status_code == 303 and "notice=settings" in r.headers["location"]
    assert (await sally.get("/api/notifications/settings")).json() == {
        "notify_tracking": True,
        "quiet_minutes": 15,
    }
    bad = await sally.post("/assistant/settings", data={"csrf_token": csrf, "quiet_minutes": "-4"})
    assert "error=settings" in bad.headers["location"]
    r = await sally.put(
        "/api/notifications/settings", json={"notify_tracking": False, "quiet_minutes": 30}
    )
    assert r.json() == {"notify_tracking": False, "quiet_minutes": 30}
    assert (
        await sally.put(
            "/api/notifications/settings", json={"notify_tracking": True, "quiet_minutes": 99999}
        )
    ).status_code == 422
    await load_pixel(app, sent.copies["ann@example.org"])
    assert (await sally.get("/api/notifications")).json()["items"] == []
    assert "Notifications for tracking activities are off" in (await sally.get("/assistant")).text


async def test_a_colleague_gets_no_notification_and_cannot_touch_any(
    app: MailbeaconApp, sally: httpx.AsyncClient, tom: httpx.AsyncClient, sent: Sent
) -> None:
    await load_pixel(app, sent.copies["ann@example.org"])
    (item,) = (await sally.get("/api/notifications")).json()["items"]
    nid = item["id"]

    assert (await tom.get("/api/notifications")).json() == {
        "items": [],
        "unread_count": 0,
        "next_cursor": None,
    }
    assert (await tom.get("/api/notifications/unread-count")).json() == {"count": 0}
    page = await tom.get("/assistant")
    assert "ann@example.org" not in page.text and f"notification-{nid}" not in page.text
    assert "ann@example.org" not in (await tom.get("/assistant/items")).text
    assert (await tom.post(f"/api/notifications/{nid}/read")).status_code == 404
    assert (await tom.post("/api/notifications/read", json={"ids": [nid]})).status_code == 404
    csrf = csrf_of(page.text)
    for action in ("read", "open"):
        r = await tom.post(f"/assistant/{nid}/{action}", data={"csrf_token": csrf})
        assert r.status_code == 404
        assert "ann@example.org" not in r.text
    await tom.post("/api/notifications/read-all")
    await tom.post("/assistant/read-all", data={"csrf_token": csrf})
    # Sally's notification is untouched by all of it.
    assert (await sally.get("/api/notifications/unread-count")).json() == {"count": 1}
    async with make_client(app) as anonymous:
        assert (await anonymous.get("/api/notifications")).status_code == 401
        assert (await anonymous.get("/api/notifications/stream")).status_code == 401
        assert (await anonymous.post(f"/api/notifications/{nid}/read")).status_code == 401
