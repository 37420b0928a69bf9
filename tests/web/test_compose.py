"""Compose, Sent, the JSON API and the Demo inbox, with the privacy rules between users."""

from __future__ import annotations

import html
import re
import socket
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.models import DemoMessage, Message, RecipientCopy, User
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in, use_demo_mailbox
from tests.factories.accounts import create_user

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello Ann, our <a href="https://example.com/pricing">pricing</a> is ready.</p>'


def checkbox(page: str, name: str) -> str | None:
    """The <input> tag of a checkbox, or None when the page does not offer it."""
    found = re.search(rf'<input type="checkbox" name="{name}"[^>]*>', page)
    return found.group(0) if found else None


def textarea(page: str, name: str) -> str:
    found = re.search(rf'<textarea id="{name}" name="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, f"no {name} textarea"
    return html.unescape(found.group(1))


async def compose(client: httpx.AsyncClient, csrf: str, **fields: str | None) -> httpx.Response:
    data = {
        "csrf_token": csrf,
        "to": "ann@example.org",
        "subject": "Pricing",
        "body_format": "html",
        "body_html": BODY,
        "open_tracking": "true",
        "link_tracking": "true",
        **fields,
    }
    return await client.post("/compose", data={k: v for k, v in data.items() if v is not None})


@pytest_asyncio.fixture
async def sally(client: httpx.AsyncClient, database: Database) -> str:
    create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    return csrf


async def test_compose_offers_both_switches_on_for_a_new_user(
    client: httpx.AsyncClient, sally: str
) -> None:
    page = await client.get("/compose")
    assert page.status_code == 200
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    for name in ("open_tracking", "link_tracking"):
        tag = checkbox(page.text, name)
        assert tag is not None
        assert "checked" in tag
    assert "Enable open tracking" in page.text
    assert "Enable link tracking" in page.text
    assert "demo mailbox" in page.text


async def test_invalid_input_comes_back_with_clear_errors_and_nothing_lost(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(
        client,
        sally,
        to="ann@example.org, not-an-address",
        cc="bob@",
        bcc="carol@example.net",
        link_tracking=None,
    )
    assert r.status_code == 422
    assert "not-an-address" in r.text
    assert "is not a valid address" in r.text
    assert "bob@" in r.text
    # Every field as typed, the switches as set.
    assert 'value="ann@example.org, not-an-address"' in r.text
    assert 'value="carol@example.net"' in r.text
    assert 'value="Pricing"' in r.text
    assert textarea(r.text, "body_html") == BODY
    assert "checked" in (checkbox(r.text, "open_tracking") or "")
    assert "checked" not in (checkbox(r.text, "link_tracking") or "")
    assert 'role="alert"' in r.text
    with database.sessions() as s:
        assert s.scalars(select(Message)).first() is None


async def test_compose_reads_its_own_form_and_still_needs_the_csrf_token(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(client, "not-the-token")
    assert r.status_code == 403
    r = await compose(client, sally, csrf_token=None)
    assert r.status_code == 403
    with database.sessions() as s:
        assert s.scalars(select(Message)).first() is None
    r = await compose(client, sally)
    assert r.status_code == 303


async def test_plain_text_drafts_keep_their_format_on_error(
    client: httpx.AsyncClient, sally: str
) -> None:
    r = await compose(
        client,
        sally,
        to="",
        body_format="text",
        body_html="",
        body_text="Hi Ann,\nsee https://example.com/",
    )
    assert r.status_code == 422
    assert "Add at least one recipient." in r.text
    assert 'value="text" checked' in r.text
    assert textarea(r.text, "body_text") == "Hi Ann,\nsee https://example.com/"


async def test_without_a_mailbox_the_draft_is_kept_and_the_way_out_shown(
    client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    r = await compose(client, csrf)
    assert r.status_code == 422
    assert "No mailbox is connected" in r.text
    assert "/settings/email-sync" in r.text
    assert 'value="ann@example.org"' in r.text


async def test_sending_answers_at_once_and_the_switches_become_the_next_default(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(client, sally, link_tracking=None)
    assert r.status_code == 303
    location = r.headers["location"]
    assert re.fullmatch(r"/mail/\d+\?notice=queued", location)
    with database.sessions() as s:
        message = s.scalars(select(Message)).one()
        copy = s.scalars(select(RecipientCopy)).one()
        user = s.scalars(select(User)).one()
    assert (message.open_tracking, message.link_tracking) == (True, False)
    assert copy.status == "queued"
    assert (user.last_open_tracking, user.last_link_tracking) == (True, False)
    page = await client.get("/compose")
    assert "checked" in (checkbox(page.text, "open_tracking") or "")
    assert "checked" not in (checkbox(page.text, "link_tracking") or "")

    r = await compose(client, sally, open_tracking=None, link_tracking="true")
    assert r.status_code == 303
    page = await client.get("/compose")
    assert "checked" not in (checkbox(page.text, "open_tracking") or "")
    assert "checked" in (checkbox(page.text, "link_tracking") or "")


async def test_an_option_switched_off_is_not_offered_nor_honoured(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await client.post(
        "/settings/tracking",
        data={"csrf_token": sally, "link_tracking_enabled": "true", "notify_tracking": "true"},
    )
    assert r.status_code == 303
    page = await client.get("/compose")
    assert checkbox(page.text, "open_tracking") is None
    assert 'name="open_tracking"' not in page.text
    assert checkbox(page.text, "link_tracking") is not None
    assert "Open tracking is\n" in page.text or "Open tracking is " in page.text
    # A forged field does not switch it back on.
    r = await compose(client, sally)
    assert r.status_code == 303
    with database.sessions() as s:
        message = s.scalars(select(Message)).one()
    assert message.open_tracking is False
    assert message.link_tracking is True


async def test_the_email_page_shows_delivery_and_decision_and_never_a_tracked_url(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(
        client, sally, to="ann@example.org, Bob <bob@example.com>", bcc="carol@example.net"
    )
    page = await client.get(r.headers["location"])
    assert page.status_code == 200
    assert "being sent in the background" in page.text
    for address in ("ann@example.org", "bob@example.com", "carol@example.net"):
        assert address in page.text
    assert "queued" in page.text
    assert "tracked" in page.text
    assert "BCC" in page.text
    listing = await client.get("/mail")
    assert "Pricing" in listing.text
    for body in (page.text, listing.text):
        assert "/t/o/" not in body
        assert "/t/c/" not in body
    # The body is shown as written, in a frame that runs nothing and carries no cookie.
    frame = re.search(r'<iframe[^>]*sandbox="([^"]*)"', page.text)
    assert frame is not None
    assert "allow-scripts" not in frame.group(1) and "allow-same-origin" not in frame.group(1)
    assert (await client.get("/sent", follow_redirects=False)).headers["location"] == "/mail"


async def test_another_user_of_the_same_organisation_gets_not_found(
    app: MailbeaconApp, client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(client, sally)
    message_id = int(r.headers["location"].split("/")[2].split("?")[0])
    create_user(database, "otto@example.com", org="Acme", name="Otto")
    with database.sessions() as s:
        orgs = {u.email: u.organisation_id for u in s.scalars(select(User))}
    assert orgs["otto@example.com"] == orgs["sally@example.com"]
    async with make_client(app) as otto:
        csrf = await sign_in(otto, "otto@example.com")
        for path in (f"/mail/{message_id}", "/mail/999999"):
            page = await otto.get(path)
            assert page.status_code == 404
            assert "Not found" in page.text
            assert "Pricing" not in page.text
        api = await otto.get(f"/api/messages/{message_id}")
        assert api.status_code == 404
        assert "Pricing" not in api.text
        assert "Pricing" not in (await otto.get("/mail")).text
        r = await otto.post("/settings/api-tokens", data={"csrf_token": csrf, "name": "script"})
        token = re.search(r'id="new-token">([^<]+)<', r.text)
        assert token is not None
        api = await otto.get(
            f"/api/messages/{message_id}", headers={"authorization": f"Bearer {token.group(1)}"}
        )
        assert api.status_code == 404
    own = await client.get(f"/api/messages/{message_id}")
    assert own.status_code == 200
    assert own.json()["subject"] == "Pricing"


async def test_the_api_sends_and_reports_each_recipient(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await client.post("/settings/api-tokens", data={"csrf_token": sally, "name": "CRM"})
    token = re.search(r'id="new-token">([^<]+)<', r.text)
    assert token is not None
    auth = {"authorization": f"Bearer {token.group(1)}"}
    async with httpx.AsyncClient(transport=client._transport, base_url="http://mb.test") as api:
        r = await api.post(
            "/api/messages",
            headers=auth,
            json={
                "to": ["ann@example.org", "bob@example.com"],
                "cc": "carol@example.net",
                "subject": "Hello",
                "body_html": BODY,
            },
        )
        assert r.status_code == 202, r.text
        sent = r.json()
        assert r.headers["location"] == f"/api/mail/{sent['id']}"
        assert sent["open_tracking"] is True
        assert sent["link_tracking"] is True
        assert [
            (x["address"], x["kind"], x["status"], x["decision"]) for x in sent["recipients"]
        ] == [
            ("ann@example.org", "to", "queued", "tracked"),
            ("bob@example.com", "to", "queued", "tracked"),
            ("carol@example.net", "cc", "queued", "tracked"),
        ]
        r = await api.get(f"/api/mail/{sent['id']}", headers=auth)
        assert r.status_code == 200
        assert len(r.json()["recipients"]) == 3
        # The path of earlier versions is a documented alias with the same answer.
        old = await api.get(f"/api/messages/{sent['id']}", headers=auth)
        assert old.json() == r.json()

        r = await api.post("/api/messages", headers=auth, json={"to": "nobody@", "subject": "x"})
        assert r.status_code == 422
        assert "to" in r.json()["errors"]
        r = await api.post("/api/messages", headers=auth, json={"to": 42})
        assert r.status_code == 422

    await client.post(
        "/settings/tracking", data={"csrf_token": sally, "link_tracking_enabled": "true"}
    )
    async with httpx.AsyncClient(transport=client._transport, base_url="http://mb.test") as api:
        r = await api.post(
            "/api/messages",
            headers=auth,
            json={"to": "ann@example.org", "body_html": BODY, "open_tracking": True},
        )
        assert r.status_code == 422
        assert "switched off" in r.json()["errors"]["open_tracking"][0]
        r = await api.post(
            "/api/messages", headers=auth, json={"to": "ann@example.org", "body_html": BODY}
        )
        assert r.status_code == 202
        assert r.json()["open_tracking"] is False


# ------------------------------------------------------------------ the demo inbox


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def demo_app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    """The app with its demo mailbox listening, as `serve` runs it."""
    runtime = Runtime.from_settings(settings.model_copy(update={"DEMO_SMTP_PORT": free_port()}))
    application = MailbeaconApp(runtime)
    server = DemoSmtpServer(runtime.database, port=runtime.settings.DEMO_SMTP_PORT)
    await server.start()
    yield application
    await server.stop()
    runtime.database.dispose()


async def test_the_demo_inbox_shows_each_copy_as_its_recipient_would_see_it(
    demo_app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    create_user(database, "otto@example.com", org="Acme", name="Otto")
    async with make_client(demo_app) as sally, make_client(demo_app) as otto:
        csrf = await sign_in(sally)
        await use_demo_mailbox(sally, csrf)
        r = await compose(
            sally, csrf, to="ann@example.org, bob@example.com", subject="Pricing <ready>"
        )
        assert r.status_code == 303
        assert await demo_app.runtime.make_outbox_worker().run_once() == 2

        inbox = await sally.get("/demo-inbox")
        assert inbox.status_code == 200
        assert "ann@example.org" in inbox.text
        assert "bob@example.com" in inbox.text
        assert "Pricing &lt;ready&gt;" in inbox.text
        links = re.findall(r'href="/demo-inbox/(\d+)"', inbox.text)
        assert len(links) == 2
        with database.sessions() as s:
            ann_copy = s.scalars(
                select(RecipientCopy).where(RecipientCopy.address == "ann@example.org")
            ).one()
            ann_demo = s.scalars(
                select(DemoMessage).where(DemoMessage.recipient == "ann@example.org")
            ).one()
        page = await sally.get(f"/demo-inbox/{ann_demo.id}")
        assert page.status_code == 200
        csp = page.headers["content-security-policy"]
        assert "img-src *" in csp
        assert "script-src 'none'" in csp
        assert page.headers["referrer-policy"] == "no-referrer"
        frame = re.search(r"<iframe[^>]*>", page.text)
        assert frame is not None
        tag = frame.group(0)
        assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in tag
        assert "allow-same-origin" not in tag
        assert "allow-scripts" not in tag
        srcdoc = html.unescape(re.search(r'srcdoc="([^"]*)"', tag).group(1))  # type: ignore[union-attr]
        # Ann's own copy: her pixel and her tracked link, links opening in a new tab.
        token = demo_app.runtime.codec.mint_open_token(ann_copy.id)
        assert f"/t/o/{token}.gif" in srcdoc
        assert '<base target="_blank">' in srcdoc
        assert "/t/c/" in srcdoc
        assert "Subject" in page.text
        assert "Pricing &lt;ready&gt;" in page.text
        text_view = await sally.get(f"/demo-inbox/{ann_demo.id}?part=text")
        assert "/t/o/" not in text_view.text
        assert "/t/c/" in text_view.text

        # Another user of the organisation sees none of it.
        await sign_in(otto, "otto@example.com")
        assert "ann@example.org" not in (await otto.get("/demo-inbox")).text
        assert (await otto.get(f"/demo-inbox/{ann_demo.id}")).status_code == 404
