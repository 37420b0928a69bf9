"""Contacts with consent and its history (pages and API), importing consents with a report
of rejected lines, and an audit entry for each kind of view and each change."""

from __future__ import annotations

import asyncio
import csv
import io

import httpx
import pytest
from sqlalchemy import insert, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.models import AuditEntry, Organisation, User
from tests.client import csrf_of
from tests.factories.hits import hit, record
from tests.factories.privacy import copies_of, record_consent

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello, see <a href="https://example.com/offer">our offer</a>.</p>'
ANN = "ann@example.org"


def actions(app: MailbeaconApp) -> list[tuple[str, str, str]]:
    with app.runtime.database.sessions() as s:
        return [
            (e.action, e.channel, e.subject)
            for e in s.scalars(select(AuditEntry).order_by(AuditEntry.id))
        ]


async def test_contacts_list_search_detail_and_consent_history(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    r = await admin.post(
        "/api/messages",
        json={"to": ["Ann Example <ann@example.org>", "bob@example.com"], "subject": "Hi",
              "body_html": BODY},
    )  # fmt: skip
    assert r.status_code == 202
    listed = (await admin.get("/api/contacts")).json()["items"]
    assert {c["address"] for c in listed} == {ANN, "bob@example.com"}
    assert {c["consent_state"] for c in listed} == {"unknown"}
    assert [c["address"] for c in (await admin.get("/api/contacts?q=Ann Ex")).json()["items"]] == [
        ANN
    ]

    # Granting needs the text the person saw: it is the proof.
    r = await member.put(
        f"/api/contacts/{ANN}/consent", json={"state": "granted", "method": "verbal"}
    )
    assert r.status_code == 422 and "text" in r.json()["errors"]
    r = await member.put(
        f"/api/contacts/{ANN}/consent",
        json={
            "state": "granted",
            "method": "verbal",
            "text": "Yes, track my opens.",
            "note": "call",
        },
    )
    assert r.status_code == 200 and r.json()["consent_state"] == "granted"
    bad = await member.put(
        f"/api/contacts/{ANN}/consent", json={"state": "withdrawn", "method": "opt_out_page"}
    )
    assert bad.status_code == 422  # only the recipient's page records that
    assert [
        c["address"] for c in (await admin.get("/api/contacts?state=granted")).json()["items"]
    ] == [ANN]

    # The page: state, history with proof, and the form to record more.
    page = await admin.get(f"/contacts/{ANN}")
    assert "Yes, track my opens." in page.text and "mo@example.com" in page.text
    r = await admin.post(
        f"/contacts/{ANN}/consent",
        data={"csrf_token": csrf_of(page.text), "state": "refused", "method": "email_reply",
              "text": "", "note": "said no"},
    )  # fmt: skip
    assert r.status_code == 303
    detail = (await admin.get(f"/api/contacts/{ANN}")).json()
    assert [h["state"] for h in detail["consent_history"]] == ["refused", "granted"]
    assert detail["consent_history"][0]["previous_state"] == "granted"
    assert detail["consent_history"][1]["recorded_by"] == "mo@example.com"
    listing = await admin.get("/contacts?q=ann")
    assert ANN in listing.text and "bob@example.com" not in listing.text
    assert (await admin.get("/api/contacts/nobody@example.org")).status_code == 404


async def test_a_user_sees_only_their_own_emails_tracking_on_a_contact(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    with app.runtime.database.sessions() as s:
        alice_id = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice_id is not None
    record_consent(app.runtime.database, app.runtime, alice_id, ANN)
    r = await admin.post("/api/messages", json={"to": [ANN], "subject": "Hi", "body_html": BODY})
    copy = copies_of(app.runtime.database, int(r.json()["id"]))[ANN]
    record(app.runtime, hit(copy.id))
    mine = (await admin.get(f"/api/contacts/{ANN}")).json()
    assert len(mine["emails"]) == 1 and len(mine["events"]) == 1
    theirs = (await member.get(f"/api/contacts/{ANN}")).json()
    assert theirs["consent_state"] == "granted"  # the organisation's
    assert theirs["emails"] == [] and theirs["events"] == []  # Alice's tracking is hers


async def test_importing_consents_reports_each_rejected_line(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    lines = "\n".join(
        [
            "email;state;method;given_at;text",
            "ann@example.org;granted;web_form;2026-03-01;I agree to tracking.",
            "bob@example.com;refused;;;",
            "not an address;granted;;;x",
            "cy@example.org;maybe;;;x",
            "di@example.org;granted;;;",  # no text and no default: no proof
            "ed@example.org;granted;carrier pigeon;;x",
            "fi@example.org;granted;;2999-01-01;x",
            "",
        ]
    )
    r = await admin.post("/api/contacts/import", json={"csv": lines})
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["accepted"] == 2
    assert [x["line"] for x in report["rejected"]] == [4, 5, 6, 7, 8]
    reasons = {x["line"]: x["reason"] for x in report["rejected"]}
    assert "not an address" in reasons[4]
    assert "granted, refused or withdrawn" in reasons[5]
    assert "proof" in reasons[6]
    assert "method" in reasons[7]
    assert "future" in reasons[8]
    ann = (await admin.get(f"/api/contacts/{ANN}")).json()
    assert ann["consent_history"][0]["method"] == "web_form"
    assert ann["consent_history"][0]["given_at"].startswith("2026-03-01")
    # A default text covers lines without one; the page shows the same report.
    page = await admin.get("/contacts/import")
    r = await admin.post(
        "/contacts/import",
        data={"csrf_token": csrf_of(page.text), "default_text": "Signed up at the fair.",
              "csv_text": "address,state\ndi@example.org,granted\nbad,granted\n"},
    )  # fmt: skip
    assert r.status_code == 200
    assert "1 consent recorded, 1 line rejected" in r.text and '<td class="num">3</td>' in r.text
    r = await admin.post("/api/contacts/import", json={"csv": "who,what\nx,y\n"})
    assert r.status_code == 422
    assert (await member.post("/api/contacts/import", json={"csv": lines})).status_code == 403


async def test_every_kind_of_view_and_change_is_audited(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    with app.runtime.database.sessions() as s:
        alice_id = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice_id is not None
    record_consent(app.runtime.database, app.runtime, alice_id, ANN)
    await admin.post("/api/messages", json={"to": [ANN], "subject": "Hi", "body_html": BODY})
    assert (await admin.get(f"/contacts/{ANN}")).status_code == 200
    assert (await admin.get(f"/contacts/{ANN}/timeline")).status_code == 200
    assert (await admin.get(f"/api/contacts/{ANN}")).status_code == 200
    assert (await admin.get(f"/api/contacts/{ANN}/events")).status_code == 200
    assert (await admin.get(f"/api/contacts/{ANN}/export")).status_code == 200
    assert (await admin.get(f"/contacts/{ANN}/export")).status_code == 200
    assert (await member.get(f"/contacts/{ANN}")).status_code == 200
    await admin.put("/api/org/privacy", json={"store_network": False})
    # Listing contacts shows no tracking data: not a view of anyone's.
    assert (await admin.get("/api/contacts")).status_code == 200
    assert actions(app) == [
        ("consent.changed", "web", ANN),
        ("contact.viewed", "web", ANN),
        ("contact.timeline_viewed", "web", ANN),
        ("contact.read", "api", ANN),
        ("contact.timeline_viewed", "api", ANN),
        ("contact.exported", "api", ANN),
        ("contact.exported", "web", ANN),
        ("contact.viewed", "web", ANN),
        ("policy.changed", "api", ""),
    ]
    # Admins read and export the log; a member does neither.
    page = await admin.get("/settings/audit")
    assert page.text.count('data-action="contact.viewed"') == 2
    exported = await admin.get("/settings/audit.csv")
    rows = list(csv.reader(io.StringIO(exported.text)))
    assert rows[0] == ["at", "actor", "channel", "action", "subject", "detail"]
    assert len(rows) == 10 and rows[-1][3] == "consent.changed"
    assert (await admin.get("/api/audit/export")).text == exported.text
    assert (await member.get("/api/audit")).status_code == 403
    assert (await member.get("/settings/audit.csv")).status_code == 403


@pytest.mark.parametrize(
    "path", [f"/api/contacts/{ANN}", f"/api/contacts/{ANN}/events", f"/contacts/{ANN}/timeline"]
)
async def test_an_audited_view_waits_for_another_writer_instead_of_failing(
    app: MailbeaconApp, admin: httpx.AsyncClient, path: str
) -> None:
    """A view that records who looked writes: it must begin with the write lock. Begun as a
    read, its snapshot goes stale when another writer commits meanwhile, and SQLite refuses
    the audit entry at once (503) where waiting for the lock would have served it."""
    db = app.runtime.database
    with db.sessions() as s:
        alice = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice is not None
    record_consent(db, app.runtime, alice, ANN)
    before = len(actions(app))
    with db.writer_engine.connect() as other:
        other.execute(select(1))  # BEGIN IMMEDIATE: another writer holds the lock
        request = asyncio.create_task(admin.get(path))
        await asyncio.sleep(0.5)  # the view has begun (and, read first, taken its snapshot)
        other.execute(insert(Organisation).values(name="Meanwhile Ltd"))
        other.commit()
        r = await request
    assert r.status_code == 200, r.text
    assert len(actions(app)) == before + 1
