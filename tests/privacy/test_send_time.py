"""The send-time gate: each recipient's copy is tracked only as consent and the
organisation's policy allow, inside one email; compose says so before sending."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy import delete, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.models import ConsentState, MailboxConnection, TrackingMode, User
from tests.client import csrf_of
from tests.factories.privacy import (
    OPT_OUT_LINK,
    PIXEL,
    TRACKED_LINK,
    copies_of,
    record_consent,
    set_policy,
)

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello,</p><p>see <a href="https://example.com/offer">our offer</a>.</p>'
GRANTED, UNKNOWN, WITHDRAWN = "ann@example.org", "uma@example.org", "wendy@example.org"


async def send(client: httpx.AsyncClient, to: list[str], route: str = "api") -> int:
    if route == "api":
        r = await client.post(
            "/api/messages", json={"to": to, "subject": "Our offer", "body_html": BODY}
        )
        assert r.status_code == 202, r.text
        return int(r.json()["id"])
    page = await client.get("/compose")
    r = await client.post(
        "/compose",
        data={
            "csrf_token": csrf_of(page.text),
            "to": ", ".join(to),
            "subject": "Our offer",
            "body_format": "html",
            "body_html": BODY,
            "open_tracking": "true",
            "link_tracking": "true",
        },
    )
    assert r.status_code == 303, r.text
    return int(r.headers["location"].split("/")[2].split("?")[0])


def alice(app: MailbeaconApp) -> int:
    with app.runtime.database.sessions() as s:
        found = s.scalar(select(User.id).where(User.email == "alice@example.com"))
        assert found is not None
        return found


@pytest.mark.parametrize("route", ["api", "compose"])
async def test_a_split_send_tracks_only_the_granted_recipient(
    app: MailbeaconApp, admin: httpx.AsyncClient, route: str
) -> None:
    db, user_id = app.runtime.database, alice(app)
    record_consent(db, app.runtime, user_id, GRANTED)
    record_consent(db, app.runtime, user_id, WITHDRAWN, ConsentState.GRANTED)
    record_consent(db, app.runtime, user_id, WITHDRAWN, ConsentState.WITHDRAWN)
    message_id = await send(admin, [GRANTED, UNKNOWN, WITHDRAWN], route)

    copies = copies_of(db, message_id)
    granted = copies[GRANTED]
    assert granted.decision == "tracked" and granted.open_tracked and granted.links_tracked
    assert PIXEL.search(granted.html) and TRACKED_LINK.search(granted.html)
    assert TRACKED_LINK.search(granted.text)
    assert "https://example.com/offer" not in granted.html
    # Its footer: a "Don't track me" link to the public page, itself never tracked.
    assert OPT_OUT_LINK.search(granted.html) and OPT_OUT_LINK.search(granted.text)
    for address in (UNKNOWN, WITHDRAWN):
        copy = copies[address]
        assert copy.decision == "no_consent"
        assert not copy.open_tracked and not copy.links_tracked
        assert "/t/o/" not in copy.html and "/t/c/" not in copy.html + copy.text
        assert "/p/opt-out/" not in copy.html + copy.text
        assert 'href="https://example.com/offer"' in copy.html
    assert "No recorded consent" in copies[UNKNOWN].decision_reason
    assert "withdrew" in copies[WITHDRAWN].decision_reason

    # The decision and its reason, per recipient, in the API and on the email's page.
    detail = (await admin.get(f"/api/mail/{message_id}")).json()
    by_address = {r["address"]: r for r in detail["recipients"]}
    assert by_address[GRANTED]["decision"] == "tracked"
    assert by_address[UNKNOWN]["decision"] == "no_consent"
    assert "No recorded consent" in by_address[UNKNOWN]["decision_reason"]
    page = (await admin.get(f"/mail/{message_id}")).text
    assert page.count("not tracked (no consent)") == 2


async def test_off_sends_every_copy_untracked(app: MailbeaconApp, admin: httpx.AsyncClient) -> None:
    db, user_id = app.runtime.database, alice(app)
    record_consent(db, app.runtime, user_id, GRANTED)
    set_policy(db, user_id, tracking_mode=TrackingMode.OFF)
    message_id = await send(admin, [GRANTED, UNKNOWN])
    for copy in copies_of(db, message_id).values():
        assert copy.decision == "disabled_by_org"
        assert "switched off for your organisation" in copy.decision_reason
        assert "/t/" not in copy.html + copy.text and "/p/opt-out/" not in copy.html
        assert 'href="https://example.com/offer"' in copy.html


async def test_aggregate_tracks_the_consenting_with_the_aggregate_decision(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app)
    record_consent(db, app.runtime, user_id, GRANTED)
    set_policy(db, user_id, tracking_mode=TrackingMode.AGGREGATE)
    copies = copies_of(db, await send(admin, [GRANTED, UNKNOWN]))
    assert copies[GRANTED].decision == "aggregate" and PIXEL.search(copies[GRANTED].html)
    assert "never by whom" in copies[GRANTED].decision_reason
    assert "without recording who" in copies[GRANTED].html  # the footer says so too
    assert copies[UNKNOWN].decision == "no_consent"


async def test_a_refusal_counts_even_where_consent_is_not_required(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app)
    set_policy(db, user_id, consent_required=False)
    record_consent(db, app.runtime, user_id, WITHDRAWN, ConsentState.REFUSED)
    copies = copies_of(db, await send(admin, [UNKNOWN, WITHDRAWN]))
    assert copies[UNKNOWN].decision == "tracked"
    assert copies[WITHDRAWN].decision == "no_consent" and not copies[WITHDRAWN].open_tracked
    assert "refused" in copies[WITHDRAWN].decision_reason


async def test_the_demo_mailbox_needs_no_consent_but_honours_a_withdrawal(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app)
    with db.unit_of_work() as s:
        s.execute(delete(MailboxConnection).where(MailboxConnection.user_id == user_id))
    r = await admin.post(
        "/settings/email-sync/demo", data={"csrf_token": admin.headers["x-csrf-token"]}
    )
    assert r.headers["location"].endswith("notice=demo")
    record_consent(db, app.runtime, user_id, WITHDRAWN, ConsentState.WITHDRAWN)
    copies = copies_of(db, await send(admin, [UNKNOWN, WITHDRAWN]))
    # Nobody outside this server receives the demo mailbox's mail.
    assert copies[UNKNOWN].decision == "tracked"
    assert copies[WITHDRAWN].decision == "no_consent"


async def chips(client: httpx.AsyncClient, **fields: Any) -> dict[str, dict[str, Any]]:
    r = await client.post("/api/compose/recipients", json=fields)
    assert r.status_code == 200, r.text
    return {c["address"]: c for c in r.json()["recipients"]}


async def test_compose_chips_say_before_sending_who_will_be_tracked(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app)
    record_consent(db, app.runtime, user_id, GRANTED)
    found = await chips(
        admin, to=f"Ann <{GRANTED}>, {UNKNOWN}, not-an-addr", bcc="alice@example.com"
    )
    assert found[GRANTED]["label"] == "tracked" and found[GRANTED]["tracked"]
    assert found[UNKNOWN]["label"] == "not tracked: no consent"
    assert found["alice@example.com"]["label"] == "not tracked: your own address"
    assert found["alice@example.com"]["kind"] == "bcc"
    assert len(found) == 3  # what cannot be read yet is left out
    off = await chips(admin, to=GRANTED, open_tracking=False, link_tracking=False)
    assert off[GRANTED]["label"] == "not tracked: switched off"
    # Asking creates no contact and changes nothing.
    assert (await admin.get(f"/api/contacts/{UNKNOWN}")).status_code == 404
    # From a browser session, only with its CSRF token.
    r = await admin.post(
        "/api/compose/recipients", json={"to": GRANTED}, headers={"x-csrf-token": "forged"}
    )
    assert r.status_code == 403


async def test_an_erased_address_is_untracked_until_it_consents_again(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db, user_id = app.runtime.database, alice(app)
    set_policy(db, user_id, consent_required=False)
    await send(admin, [UNKNOWN])
    assert (await admin.delete(f"/api/contacts/{UNKNOWN}")).status_code == 200
    copies = copies_of(db, await send(admin, [UNKNOWN]))
    assert copies[UNKNOWN].decision == "no_consent"
    assert "erased" in copies[UNKNOWN].decision_reason
    record_consent(db, app.runtime, user_id, UNKNOWN)
    assert copies_of(db, await send(admin, [UNKNOWN]))[UNKNOWN].decision == "tracked"
