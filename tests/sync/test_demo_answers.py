"""The Demo inbox answers: a reply, an automatic reply and a bounce, through the same
incoming path as IMAP mail, and how the sender then sees them (pages and JSON API)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.models import DemoMessage, EventLabel, Notification
from mailbeacon.runtime import Runtime
from tests.client import csrf_of, make_client, sign_in
from tests.factories.accounts import create_user
from tests.factories.hits import CHROME, hit, record
from tests.sync.harness import sync_settings

__all__ = ["sync_settings"]

pytestmark = pytest.mark.asyncio

BODY = (
    '<p>Hello Carla,</p><p>here is <a href="https://example.com/pricing">our pricing</a>.</p>'
    "<p>Sally</p>"
)


@dataclass
class Demo:
    app: MailbeaconApp
    client: httpx.AsyncClient
    csrf: str
    database: Database


@pytest_asyncio.fixture
async def demo(sync_settings: Settings, database: Database, tmp_path: Path) -> AsyncIterator[Demo]:
    """Sally, signed in, sending through a running demo mailbox."""
    server = DemoSmtpServer(database, port=0)
    await server.start()
    runtime = Runtime.from_settings(
        sync_settings.model_copy(update={"DEMO_SMTP_PORT": server.port})
    )
    app = MailbeaconApp(runtime)
    try:
        async with make_client(app) as client:
            create_user(database, name="Sally Seller")
            csrf = await sign_in(client)
            r = await client.post("/settings/email-sync/demo", data={"csrf_token": csrf})
            assert r.status_code == 303
            yield Demo(app, client, csrf, database)
    finally:
        await server.stop()
        runtime.database.dispose()


async def send(demo: Demo, subject: str = "Pricing") -> tuple[int, dict[str, int]]:
    """Send to Carla, Dan and Erin; returns the email's id and each delivery's demo id."""
    r = await demo.client.post(
        "/api/messages",
        json={
            "to": ["Carla Buyer <carla@example.org>", "dan@example.org"],
            "cc": ["erin@example.org"],
            "subject": subject,
            "body_html": BODY,
        },
        headers={"x-csrf-token": demo.csrf},
    )
    assert r.status_code == 202, r.text
    message_id = r.json()["id"]
    assert await demo.app.runtime.make_outbox_worker().run_once() == 3
    with demo.database.sessions() as s:
        delivered = {d.recipient: d.id for d in s.scalars(select(DemoMessage))}
    return message_id, delivered


async def answer(demo: Demo, demo_id: int, what: str, **form: str) -> None:
    page = await demo.client.get(f"/demo-inbox/{demo_id}")
    r = await demo.client.post(
        f"/demo-inbox/{demo_id}/{what}", data={"csrf_token": csrf_of(page.text), **form}
    )
    assert r.status_code == 303, r.text


def recipient(detail: dict[str, object], address: str) -> dict[str, object]:
    [found] = [r for r in detail["recipients"] if r["address"] == address]  # type: ignore[attr-defined]
    return found  # type: ignore[no-any-return]


async def test_a_demo_recipient_replies_and_the_sender_sees_it_everywhere(demo: Demo) -> None:
    message_id, delivered = await send(demo)
    page = (await demo.client.get(f"/demo-inbox/{delivered['carla@example.org']}")).text
    assert "Reply as carla@example.org" in page
    await answer(demo, delivered["carla@example.org"], "reply", text="Thursday works for us.")

    detail = (await demo.client.get(f"/api/mail/{message_id}")).json()
    carla = recipient(detail, "carla@example.org")
    assert carla["reply_count"] == 1 and carla["replied_at"] is not None
    assert carla["auto_replied_at"] is None and carla["bounce"] is None
    assert recipient(detail, "dan@example.org")["reply_count"] == 0
    assert detail["reply_count"] == 1

    [reply] = (await demo.client.get(f"/api/mail/{message_id}/replies")).json()
    assert reply["kind"] == "reply" and reply["from_name"] == "Carla Buyer"
    assert reply["new_text"] == "Thursday works for us."
    # The quoted email is shown without its tracking: no pixel, links to where they lead.
    assert "our pricing" in reply["full_text"] and "/t/" not in reply["full_text"]
    assert "/t/" not in reply["body_html"]
    assert 'href="https://example.com/pricing"' in reply["body_html"]
    # The quoted pixel is still an <img>, with nothing left to load.
    assert re.search(r"<img[^>]*\bsrc=", reply["body_html"]) is None

    notes = (await demo.client.get("/api/notifications")).json()["items"]
    assert [n["title"] for n in notes if n["kind"] == "reply"] == [
        "Carla Buyer replied to “Pricing”"
    ]

    tab = (await demo.client.get("/mail")).text
    assert f'href="/mail/{message_id}#replies" data-reply-count="1"' in tab
    rows = (await demo.client.get("/api/mail")).json()["items"]
    assert rows[0]["reply_count"] == 1
    page = (await demo.client.get(f"/mail/{message_id}")).text
    assert "Thursday works for us." in page and "Show the whole message" in page
    # The page shows the reply's HTML in a sandboxed frame, without our pixel.
    assert "/t/o/" not in page


async def test_an_automatic_reply_is_shown_as_such_and_never_counted(demo: Demo) -> None:
    message_id, delivered = await send(demo)
    await answer(demo, delivered["dan@example.org"], "auto-reply")
    detail = (await demo.client.get(f"/api/mail/{message_id}")).json()
    dan = recipient(detail, "dan@example.org")
    assert dan["auto_replied_at"] is not None and dan["reply_count"] == 0
    assert detail["reply_count"] == 0
    [auto] = (await demo.client.get(f"/api/mail/{message_id}/replies")).json()
    assert auto["kind"] == "auto_reply"
    with demo.database.sessions() as s:
        assert s.scalars(select(Notification)).all() == []
    tab = (await demo.client.get("/mail")).text
    assert "data-reply-count" not in tab and "automatic reply" in tab


async def test_a_bounce_marks_the_copy_and_makes_its_opens_suspect(demo: Demo) -> None:
    message_id, delivered = await send(demo)
    detail = (await demo.client.get(f"/api/mail/{message_id}")).json()
    erin_copy = recipient(detail, "erin@example.org")["copy_id"]
    # A scanner at the receiving end fetched the pixel before the server gave up.
    record(demo.app.runtime, hit(int(erin_copy), ua=CHROME))  # type: ignore[call-overload]
    await answer(demo, delivered["erin@example.org"], "bounce")

    detail = (await demo.client.get(f"/api/mail/{message_id}")).json()
    erin = recipient(detail, "erin@example.org")
    assert erin["status"] == "bounced"
    assert erin["bounce"]["code"] == "5.1.1"  # type: ignore[index]
    assert "User unknown" in erin["bounce"]["diagnostic"]  # type: ignore[index]
    assert recipient(detail, "carla@example.org")["status"] == "sent"
    [event] = detail["timeline"]
    assert event["label"] == EventLabel.HUMAN and event["suspect"] is True
    page = (await demo.client.get(f"/mail/{message_id}")).text
    assert "suspect (bounced)" in page and "badge-bounced" in page
    tab = (await demo.client.get("/mail")).text
    assert "mb-bounced" in tab


async def test_replies_and_answers_are_only_the_senders_to_see(
    demo: Demo, database: Database
) -> None:
    message_id, delivered = await send(demo)
    await answer(demo, delivered["carla@example.org"], "reply", text="Yes.")
    create_user(database, email="olga@example.com", name="Olga")
    async with make_client(demo.app) as other:
        csrf = await sign_in(other, "olga@example.com")
        assert (await other.get(f"/api/mail/{message_id}/replies")).status_code == 404
        r = await other.post(
            f"/demo-inbox/{delivered['carla@example.org']}/reply",
            data={"csrf_token": csrf, "text": "hijacked"},
        )
        assert r.status_code == 404
        r = await other.post(
            f"/demo-inbox/{delivered['carla@example.org']}/bounce", data={"csrf_token": csrf}
        )
        assert r.status_code == 404
    # Without the CSRF token, nothing is answered either.
    r = await demo.client.post(f"/demo-inbox/{delivered['dan@example.org']}/bounce")
    assert r.status_code == 403
    detail = (await demo.client.get(f"/api/mail/{message_id}")).json()
    assert [r["status"] for r in detail["recipients"]] == ["sent", "sent", "sent"]
    assert detail["reply_count"] == 1


async def test_a_reply_quoting_a_tracked_link_shows_its_destination_in_the_page(
    demo: Demo,
) -> None:
    message_id, delivered = await send(demo)
    await answer(demo, delivered["carla@example.org"], "reply", text="See you then.")
    page = (await demo.client.get(f"/mail/{message_id}")).text
    frames = re.findall(r'srcdoc="([^"]*)"', page)
    assert len(frames) == 2  # the email as written, and Carla's reply
    assert all("/t/" not in frame for frame in frames)
    assert any("https://example.com/pricing" in frame for frame in frames[1:])
