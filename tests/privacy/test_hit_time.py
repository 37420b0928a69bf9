"""The hit-time gate: what is kept of a hit depends on the policy and the consent as they
are when the hit arrives, for every email ever sent; the edge answers the same."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import func, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.models import (
    AnonymousHit,
    ConsentState,
    LinkClickStat,
    Message,
    Notification,
    RecipientCopy,
    TrackingEvent,
    TrackingMode,
    User,
)
from tests.client import stored_before_answer
from tests.factories.hits import CHROME, THUNDERBIRD, hit, record
from tests.factories.privacy import TRACKED_LINK, copies_of, record_consent, set_policy

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello,</p><p>see <a href="https://example.com/offer">our offer</a>.</p>'
ANN, BOB = "ann@example.org", "bob@example.com"


def alice(database: Database) -> int:
    with database.sessions() as s:
        found = s.scalar(select(User.id).where(User.email == "alice@example.com"))
        assert found is not None
        return found


async def send(client: httpx.AsyncClient, *to: str) -> int:
    r = await client.post(
        "/api/messages", json={"to": list(to), "subject": "Our offer", "body_html": BODY}
    )
    assert r.status_code == 202, r.text
    return int(r.json()["id"])


def count(database: Database, model: type) -> int:
    with database.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def figures(database: Database, model: type, row_id: int) -> tuple[int, int, int]:
    with database.sessions() as s:
        row = s.get(model, row_id)
        assert row is not None
        return row.open_count, row.click_count, row.machine_event_count


async def open_and_click(app: MailbeaconApp, copy_html: str, copy_id: int) -> None:
    """A person reads the copy: the pixel, then its link; the edge answers as always."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stored_before_answer(app), client=("192.0.2.44", 50000)),
        base_url="http://mb.test",
        headers={"user-agent": CHROME},
    ) as reader:
        pixel = await reader.get(f"/t/o/{app.runtime.codec.mint_open_token(copy_id)}.gif")
        assert pixel.status_code == 200 and pixel.headers["content-type"] == "image/gif"
        link = TRACKED_LINK.search(copy_html)
        assert link is not None
        click = await reader.get(link.group(0).replace("http://mb.test", ""))
        assert click.status_code in (302, 303, 307)
        assert click.headers["location"] == "https://example.com/offer"


async def test_aggregate_keeps_counts_and_no_person_anywhere(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app.runtime.database)
    for address in (ANN, BOB):
        record_consent(db, app.runtime, user_id, address)
    set_policy(db, user_id, tracking_mode=TrackingMode.AGGREGATE)
    message_id = await send(admin, ANN, BOB)
    ann = copies_of(db, message_id)[ANN]
    await open_and_click(app, ann.html, ann.id)

    assert count(db, TrackingEvent) == 0 and count(db, LinkClickStat) == 0
    assert count(db, Notification) == 0
    assert figures(db, Message, message_id) == (1, 1, 0)
    assert figures(db, RecipientCopy, ann.id) == (0, 0, 0)
    # The API: counts on the email, nothing per person.
    detail = (await admin.get(f"/api/mail/{message_id}")).json()
    assert (detail["open_count"], detail["click_count"]) == (1, 1)
    assert detail["timeline"] == [] and detail["open_icon"]["occasions"] == []
    assert all(r["open_count"] == 0 and r["first_open_at"] is None for r in detail["recipients"])
    listed = (await admin.get("/api/mail")).json()["items"][0]
    assert listed["open_icon"]["occasions"] == [] and listed["open_icon"]["count"] == 1
    assert (await admin.get("/api/notifications")).json()["items"] == []
    contact = (await admin.get(f"/api/contacts/{ANN}")).json()
    assert contact["events"] == [] and contact["emails"][0]["open_count"] == 0
    # The pages: counted anonymously, no one named beside an open.
    page = (await admin.get(f"/mail/{message_id}")).text
    assert "Counted anonymously" in page and "No opens or clicks yet." in page
    assert "mb-occasion" not in page
    tab = (await admin.get("/mail")).text
    assert "Counted anonymously" in tab and "mb-occasion" not in tab


async def test_switching_to_aggregate_applies_to_emails_already_sent(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app.runtime.database)
    record_consent(db, app.runtime, user_id, ANN)
    message_id = await send(admin, ANN)
    ann = copies_of(db, message_id)[ANN]
    assert ann.decision == "tracked"
    record(app.runtime, hit(ann.id))
    set_policy(db, user_id, tracking_mode=TrackingMode.AGGREGATE)
    late = hit(ann.id, ua=THUNDERBIRD, ip_prefix="198.51.100.0/24")
    result = record(app.runtime, late)
    assert (result.written, result.anonymous) == (0, 1)
    assert count(db, TrackingEvent) == 1  # the first, individual open only
    assert figures(db, Message, message_id)[0] == 2
    assert figures(db, RecipientCopy, ann.id)[0] == 1
    # A journal replayed after a crash counts an anonymous hit once, as any other.
    again = app.runtime.pipeline.process([late], replay=True)
    assert again.skipped_duplicates == 1 and figures(db, Message, message_id)[0] == 2
    assert count(db, AnonymousHit) == 1


async def test_off_and_unconsented_hits_store_nothing_at_all(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app.runtime.database)
    set_policy(db, user_id, consent_required=False)
    message_id = await send(admin, ANN, BOB)
    copies = copies_of(db, message_id)
    assert copies[ANN].decision == copies[BOB].decision == "tracked"
    # Consent becomes required: Bob never gave his, Ann does now.
    set_policy(db, user_id, consent_required=True)
    record_consent(db, app.runtime, user_id, ANN)
    result = record(app.runtime, hit(copies[ANN].id), hit(copies[BOB].id, ua=THUNDERBIRD))
    assert (result.written, result.withheld) == (1, 1)
    # The organisation switches tracking off: the edge still answers, nothing is kept.
    set_policy(db, user_id, tracking_mode=TrackingMode.OFF)
    await open_and_click(app, copies[ANN].html, copies[ANN].id)
    assert count(db, TrackingEvent) == 1
    assert figures(db, Message, message_id) == (1, 0, 0)


async def test_without_network_prefixes_the_events_keep_none(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app.runtime.database)
    record_consent(db, app.runtime, user_id, ANN)
    set_policy(db, user_id, store_network=False)
    ann = copies_of(db, await send(admin, ANN))[ANN]
    await open_and_click(app, ann.html, ann.id)
    with db.sessions() as s:
        prefixes = list(s.scalars(select(TrackingEvent.ip_prefix)))
    assert prefixes == [None, None]


async def test_a_withdrawal_can_delete_the_existing_events(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app.runtime.database)
    record_consent(db, app.runtime, user_id, ANN)
    record_consent(db, app.runtime, user_id, BOB)
    message_id = await send(admin, ANN, BOB)
    copies = copies_of(db, message_id)
    await open_and_click(app, copies[ANN].html, copies[ANN].id)
    await open_and_click(app, copies[BOB].html, copies[BOB].id)
    assert count(db, TrackingEvent) == 4 and count(db, Notification) > 0

    # By default the events stay until erased.
    record_consent(db, app.runtime, user_id, BOB, ConsentState.WITHDRAWN)
    assert count(db, TrackingEvent) == 4
    # With the setting, Ann's withdrawal deletes hers; the email's figures stay.
    set_policy(db, user_id, delete_events_on_withdrawal=True)
    r = await admin.put(
        f"/api/contacts/{ANN}/consent",
        json={"state": "withdrawn", "method": "email_reply", "note": "asked by reply"},
    )
    assert r.status_code == 200 and r.json()["consent_state"] == "withdrawn"
    with db.sessions() as s:
        left = set(s.scalars(select(TrackingEvent.copy_id)))
        ann_notified = s.scalar(select(func.count()).where(Notification.copy_id == copies[ANN].id))
    assert left == {copies[BOB].id} and ann_notified == 0
    assert figures(db, RecipientCopy, copies[ANN].id) == (0, 0, 0)
    assert figures(db, Message, message_id) == (2, 2, 0)
