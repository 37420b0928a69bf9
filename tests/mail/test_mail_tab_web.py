"""The Mail tab and an email's detail, as pages and as JSON, through the whole app;
and proof that nothing of it reaches another user of the same organisation."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import User
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import CHROME, SCANNER, hit, record
from tests.factories.mail import Sent, send_mail

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    application = MailbeaconApp(Runtime.from_settings(settings))
    await application.ingest.start()
    yield application
    await application.ingest.stop()
    application.runtime.database.dispose()


@pytest_asyncio.fixture
async def sally(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    make_demo_sender(app.runtime.database)
    async with make_client(app) as c:
        await sign_in(c, "sally@example.com")
        yield c


@pytest_asyncio.fixture
async def tom(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    """A colleague: another user of Sally's organisation."""
    make_demo_sender(app.runtime.database, "tom@example.com", name="Tom")
    async with make_client(app, ip="198.51.100.7") as c:
        await sign_in(c, "tom@example.com")
        yield c


async def open_copy(app: MailbeaconApp, copy_id: int, ua: str = CHROME) -> None:
    """The recipient's mail client loads the pixel (no session, no viewer cookie)."""
    async with make_client(app, ip="192.0.2.44") as reader:
        r = await reader.get(
            f"/t/o/{app.runtime.codec.mint_open_token(copy_id)}.gif", headers={"user-agent": ua}
        )
        assert r.status_code == 200


def sally_id(database: Database) -> int:
    with database.sessions() as s:
        found = s.scalar(select(User.id).where(User.email == "sally@example.com"))
        assert found is not None
        return found


@pytest_asyncio.fixture
async def tracked(app: MailbeaconApp, sally: httpx.AsyncClient, database: Database) -> Sent:
    """Sally's email to Ann and Bob: Ann opened and clicked, a scanner looked at Bob's."""
    sent = send_mail(
        database, app.runtime, sally_id(database), ("ann@example.org", "bob@example.com"),
        subject="Our <pricing>",
    )  # fmt: skip
    await open_copy(app, sent.copies["ann@example.org"])
    t0 = time.time() + 30
    record(
        app.runtime,
        hit(sent.copies["ann@example.org"], "click", position=1, at=t0),
        hit(sent.copies["bob@example.com"], ua=SCANNER, at=t0 + 15),
    )
    return sent


async def test_the_mail_tab_lists_emails_with_icons_and_hover_details(
    sally: httpx.AsyncClient, tracked: Sent, app: MailbeaconApp, database: Database
) -> None:
    untracked = send_mail(
        database, app.runtime, sally_id(database), subject="Plain", open_tracking=False,
        link_tracking=False,
    )  # fmt: skip
    r = await sally.get("/mail")
    assert r.status_code == 200
    page = r.text
    assert 'aria-current="page">Mail</a>' in page
    row = page[page.index(f'id="mail-{tracked.message_id}"') :]
    row = row[: row.index("</tr>")]
    assert "Our &lt;pricing&gt;" in row
    assert 'class="mb-icon mb-icon-open mb-done"' in row
    assert 'class="mb-icon mb-icon-link mb-done"' in row
    assert 'ann@example.org</strong> · <span class="mb-judged mb-label-human">opened' in row
    assert "security scanner" in row and "Machines and your own views, not counted" in row
    assert "https://example.com/pricing" in row
    # In the viewer's zone (UTC until the browser says), relative, exact on hover.
    assert re.search(
        r'<time datetime="[^"]+Z" title="\w{3} \d+ \w{3} \d{4}, \d\d:\d\d:\d\d UTC" data-local>'
        r"(just now|\d+ min ago|today \d\d:\d\d|yesterday \d\d:\d\d)</time>",
        row,
    )
    plain = page[page.index(f'id="mail-{untracked.message_id}"') :]
    plain = plain[: plain.index("</tr>")]
    assert "mb-icon-open" not in plain and "mb-icon-link" not in plain  # tracking was off
    assert '<span class="mb-not-tracked">not tracked</span>' in plain
    assert '<span title="Opens not tracked">—</span>' in plain
    assert "/t/" not in page  # the list never carries a pixel or a tracked link


async def test_filters_search_and_live_rows(sally: httpx.AsyncClient, tracked: Sent) -> None:
    for query, present in [
        ("filter=opened", True),
        ("filter=clicked", True),
        ("filter=not_opened", False),
        ("filter=tracked", True),
        ("q=bob%40example", True),
        ("q=nothing-like-this", False),
        ("filter=nonsense", True),  # an unknown filter shows everything
    ]:
        r = await sally.get(f"/mail?{query}")
        assert r.status_code == 200
        assert (f'id="mail-{tracked.message_id}"' in r.text) is present, query
    rows = await sally.get(f"/mail/rows?ids={tracked.message_id},999999")
    assert rows.text.count("<tr ") == 1 and f'id="mail-{tracked.message_id}"' in rows.text


async def test_the_detail_page_shows_everything_and_fires_nothing(
    sally: httpx.AsyncClient, tracked: Sent
) -> None:
    r = await sally.get(f"/mail/{tracked.message_id}")
    assert r.status_code == 200
    page = r.text
    csp = r.headers["content-security-policy"]
    assert "img-src data: http://mb.test/static/;" in csp and "script-src 'self'" in csp
    assert 'sandbox="allow-popups allow-popups-to-escape-sandbox"' in page
    srcdoc = re.search(r'srcdoc="([^"]*)"', page)
    assert srcdoc is not None
    assert "https://example.com/pricing" in srcdoc.group(1) and "/t/" not in srcdoc.group(1)
    assert "/t/" not in page
    assert "Delivery" in page and "badge-sent" in page and "<td>tracked" in page
    assert page.count('class="mb-person"') == 2 and page.count('class="mb-machine"') == 1
    assert "security scanner" in page
    with_images = await sally.get(f"/mail/{tracked.message_id}?images=1")
    assert "img-src https: http: data:" in with_images.headers["content-security-policy"]


async def test_the_api_says_what_the_pages_show(sally: httpx.AsyncClient, tracked: Sent) -> None:
    listing = (await sally.get("/api/mail")).json()
    (row,) = [m for m in listing["items"] if m["id"] == tracked.message_id]
    assert row["open_icon"]["state"] == "done" and row["link_icon"]["state"] == "done"
    assert [e["recipient"] for e in row["open_icon"]["occasions"]] == ["ann@example.org"]
    assert [e["judged"] for e in row["open_icon"]["machine"]] == ["security scanner"]
    assert (await sally.get("/api/mail?filter=clicked")).json()["items"][0]["id"] == row["id"]
    assert (await sally.get("/api/mail?filter=bogus")).status_code == 422
    assert (await sally.get("/api/mail?before=zzz")).status_code == 400
    detail = (await sally.get(f"/api/mail/{tracked.message_id}")).json()
    assert {r["address"]: r["open_count"] for r in detail["recipients"]} == {
        "ann@example.org": 1,
        "bob@example.com": 0,
    }
    assert detail["links"][1]["click_count"] == 1
    assert "/t/" not in detail["body_html"]
    events = (await sally.get(f"/api/mail/{tracked.message_id}/events?limit=2")).json()
    assert len(events["items"]) == 2 and events["older_cursor"]
    more = await sally.get(
        f"/api/mail/{tracked.message_id}/events", params={"before": events["older_cursor"]}
    )
    assert len(more.json()["items"]) == 1
    rows = (await sally.get(f"/api/mail/rows?ids={tracked.message_id}")).json()
    assert [r["id"] for r in rows] == [tracked.message_id]


async def test_the_openapi_document_describes_the_mail_and_notification_api(
    sally: httpx.AsyncClient,
) -> None:
    doc = (await sally.get("/api/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/api/mail",
        "/api/mail/rows",
        "/api/mail/{message_id}",
        "/api/mail/{message_id}/events",
        "/api/notifications",
        "/api/notifications/unread-count",
        "/api/notifications/read",
        "/api/notifications/read-all",
        "/api/notifications/{notification_id}/read",
        "/api/notifications/settings",
        "/api/notifications/stream",
    ):
        assert path in paths, path
    detail = paths["/api/mail/{message_id}"]["get"]["responses"]["200"]
    assert detail["content"]["application/json"]["schema"]["$ref"].endswith("/MailDetailOut")
    assert "EventOut" in doc["components"]["schemas"]
    assert (
        "text/event-stream"
        in paths["/api/notifications/stream"]["get"]["responses"]["200"]["content"]
    )


# ------------------------------------------------------------------ privacy


async def test_a_colleague_sees_none_of_it_on_any_page_or_endpoint(
    app: MailbeaconApp, sally: httpx.AsyncClient, tom: httpx.AsyncClient, tracked: Sent
) -> None:
    mid = tracked.message_id
    # Sally sees it all (so the absence below means something).
    assert f'id="mail-{mid}"' in (await sally.get("/mail")).text
    assert (await sally.get(f"/mail/{mid}")).status_code == 200

    for path in (f"/mail/{mid}", f"/mail/{mid}?images=1", f"/api/mail/{mid}",
                 f"/api/mail/{mid}/events", f"/api/mail/{mid}?remote_images=true"):  # fmt: skip
        r = await tom.get(path)
        assert r.status_code == 404, path
        assert "ann@example.org" not in r.text and "pricing" not in r.text
    for path in ("/mail", "/mail?filter=opened", "/mail?q=ann", f"/mail/rows?ids={mid}"):
        r = await tom.get(path)
        assert r.status_code == 200
        assert f"mail-{mid}" not in r.text and "ann@example.org" not in r.text, path
    assert (await tom.get("/api/mail")).json()["items"] == []
    assert (await tom.get("/api/mail?q=ann")).json()["items"] == []
    assert (await tom.get(f"/api/mail/rows?ids={mid}")).json() == []
    # Nor through an API token of his.
    with app.runtime.database.unit_of_work() as session:
        user = session.scalar(select(User).where(User.email == "tom@example.com"))
        assert user is not None
        _, token = account_service.create_api_token(session, user, "probe")
    async with make_client(app) as bare:
        bare.headers["authorization"] = f"Bearer {token}"
        assert (await bare.get(f"/api/mail/{mid}")).status_code == 404
        assert (await bare.get(f"/api/mail/{mid}/events")).status_code == 404
        assert (await bare.get("/api/mail")).json()["items"] == []
    # And nobody signed out.
    async with make_client(app) as anonymous:
        assert (await anonymous.get(f"/api/mail/{mid}")).status_code == 401
        assert (await anonymous.get("/api/mail")).status_code == 401
        assert (await anonymous.get(f"/mail/{mid}")).status_code == 303


async def test_the_mail_tab_says_which_copies_are_still_queued_or_failed(
    sally: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    from mailbeacon.models import CopyStatus, RecipientCopy

    sent = send_mail(
        database, app.runtime, sally_id(database), to=("ann@example.org", "bob@example.com")
    )
    with database.unit_of_work() as s:
        for address, status in [
            ("ann@example.org", CopyStatus.QUEUED),
            ("bob@example.com", CopyStatus.FAILED),
        ]:
            copy = s.get(RecipientCopy, sent.copies[address])
            assert copy is not None
            copy.status = status
    page = (await sally.get("/mail")).text
    row = page[page.index(f'id="mail-{sent.message_id}"') :]
    row = row[: row.index("</tr>")]
    assert '<span class="mb-tag mb-tag-queued"> queued</span>' in row
    assert '<span class="mb-tag mb-tag-failed"> failed</span>' in row


async def test_an_untracked_email_says_so_plainly_on_its_page(
    sally: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    sent = send_mail(
        database, app.runtime, sally_id(database), open_tracking=False, link_tracking=False
    )
    page = (await sally.get(f"/mail/{sent.message_id}")).text
    title = page[page.index('<div class="mb-title">') :]
    assert title[: title.index("</div>")].count("not tracked") == 1
    assert "mb-icon-slot" not in title[: title.index("</div>")]
    assert '<dt>Opens</dt><dd class="mb-not-tracked">not tracked</dd>' in page
    assert '<dt>Clicks</dt><dd class="mb-not-tracked">not tracked</dd>' in page
    assert "0 by people" not in page
