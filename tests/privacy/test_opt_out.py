"""The recipient's own "Don't track me" page: reading it changes nothing, its button
withdraws consent at once with proof, and later hits keep nothing of them."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import func, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    AuditEntry,
    ConsentMethod,
    ConsentRecord,
    Contact,
    Message,
    TrackingEvent,
    User,
)
from tests.client import stored_before_answer
from tests.factories.hits import SCANNER
from tests.factories.privacy import OPT_OUT_LINK, copies_of, record_consent

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello,</p><p>see <a href="https://example.com/offer">our offer</a>.</p>'
ANN = "ann@example.org"
FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Gecko/20100101 Firefox/133.0"
# Security gateways and link previewers fetch every link of an email.
SCANNERS = [
    SCANNER,
    "Mozilla/5.0 (compatible; Barracuda Sentinel (EE))",
    "Mozilla/5.0 (compatible; Microsoft Office/16.0; Safe Links)",
    "Slackbot-LinkExpanding 1.0 (+https://api.slack.com/robots)",
]
_STAMP = re.compile(r'name="stamp" value="([^"]+)"')


def recipient(app: MailbeaconApp, ip: str = "192.0.2.77", ua: str = FIREFOX) -> httpx.AsyncClient:
    """The person who got the email: no session, no cookies."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=stored_before_answer(app), client=(ip, 50000)),
        base_url="http://mb.test",
        headers={"user-agent": ua},
    )


async def tracked_copy(app: MailbeaconApp, admin: httpx.AsyncClient) -> tuple[int, int, str]:
    """Ann consented and was sent a tracked copy: (message id, copy id, opt-out path)."""
    db = app.runtime.database
    with db.sessions() as s:
        user_id = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert user_id is not None
    record_consent(db, app.runtime, user_id, ANN)
    r = await admin.post("/api/messages", json={"to": [ANN], "subject": "Hi", "body_html": BODY})
    message_id = int(r.json()["id"])
    copy = copies_of(db, message_id)[ANN]
    link = OPT_OUT_LINK.search(copy.html)
    assert link is not None
    return message_id, copy.id, link.group(0).replace("http://mb.test", "")


def consent_of(db: Database) -> tuple[str, int]:
    with db.sessions() as s:
        contact = s.scalars(select(Contact).where(Contact.email == ANN)).one()
        records = s.scalar(select(func.count()).where(ConsentRecord.contact_id == contact.id))
        return contact.consent_state, int(records or 0)


async def test_reading_the_page_changes_nothing_whoever_reads_it(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    _, _, path = await tracked_copy(app, admin)
    before = consent_of(app.runtime.database)
    for agent in SCANNERS:
        async with recipient(app, ua=agent) as scanner:
            page = await scanner.get(path)
            assert page.status_code == 200
            assert (await scanner.head(path)).status_code in (200, 405)
            # Some scanners follow links with query strings of their own.
            assert (await scanner.get(path + "?done=1&utm_source=x")).status_code == 200
    assert consent_of(app.runtime.database) == before == ("granted", 1)
    text = page.text
    # What GDPR Art. 13 asks the page to say.
    for words in (
        "Privacy Co",  # who
        "which of its links you click",  # what
        "GDPR Art. 6(1)(a)",  # on what basis
        "deleted after 395 days",  # how long
        "not sold or passed on",  # recipients
        "a copy of what it holds about you",  # rights
        "complain to your data protection authority",
        "Stop tracking me",
    ):
        assert words in text, words
    assert "set-cookie" not in page.headers
    assert "<script" not in text
    assert page.headers["x-robots-tag"] == "noindex, nofollow"


async def test_the_button_withdraws_with_proof_and_later_hits_keep_nothing_personal(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db = app.runtime.database
    message_id, copy_id, path = await tracked_copy(app, admin)
    token = app.runtime.codec.mint_open_token(copy_id)
    async with recipient(app) as ann:
        assert (await ann.get(f"/t/o/{token}.gif")).status_code == 200
        assert db_count(db, TrackingEvent) == 1  # tracked while she consented

        page = await ann.get(path)
        stamp = _STAMP.search(page.text)
        assert stamp is not None
        done = await ann.post(path, data={"stamp": stamp.group(1)})
        assert done.status_code == 303 and done.headers["location"] == path + "?done=1"
        assert "set-cookie" not in done.headers
        after = await ann.get(done.headers["location"])
        assert (
            "Tracking is stopped." in after.text and "Stop tracking me</button>" not in after.text
        )

        # A second press (a double click, the back button) records nothing more.
        again = await ann.post(path, data={"stamp": stamp.group(1)})
        assert again.status_code == 303
        assert consent_of(db) == ("withdrawn", 2)

        # Later hits: answered as always, nothing kept about her.
        assert (await ann.get(f"/t/o/{token}.gif")).status_code == 200
        copy_html = copies_of(db, message_id)[ANN].html
        link = re.search(r"http://mb.test(/t/c/[A-Za-z0-9_\-]+)", copy_html)
        assert link is not None
        click = await ann.get(link.group(1))
        assert click.headers["location"] == "https://example.com/offer"
    assert db_count(db, TrackingEvent) == 1
    with db.sessions() as s:
        message = s.get(Message, message_id)
        assert message is not None and (message.open_count, message.click_count) == (1, 0)
        proof = s.scalars(select(ConsentRecord).order_by(ConsentRecord.id.desc())).first()
        assert proof is not None
        assert proof.method == ConsentMethod.OPT_OUT_PAGE
        assert proof.network == "192.0.2.0/24"  # the prefix, never the address
        assert proof.user_agent == FIREFOX
        assert "Stop tracking me" in proof.text and proof.recorded_by.startswith("the recipient")
        audited = list(s.scalars(select(AuditEntry.action)))
    assert audited.count("consent.withdrawn_by_recipient") == 1


def db_count(db: Database, model: type) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


async def test_a_post_without_a_fresh_stamp_of_its_own_changes_nothing(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    _, _, path = await tracked_copy(app, admin)
    other = app.runtime.privacy_keys.form_stamp(999_999, utcnow())
    async with recipient(app) as ann:
        for data in ({}, {"stamp": "forged"}, {"stamp": other}):
            r = await ann.post(path, data=data)
            assert r.status_code == 403
            assert "nothing was changed" in r.text
            assert _STAMP.search(r.text)  # a fresh form to press again
    assert consent_of(app.runtime.database) == ("granted", 1)


async def test_a_forged_or_damaged_link_finds_nothing(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    _, _, path = await tracked_copy(app, admin)
    token = path.rsplit("/", 1)[1]
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    async with recipient(app) as someone:
        assert (await someone.get("/p/opt-out/../../etc")).status_code == 404
        for bad in (flipped, token[:-4], "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "%2e%2e"):
            r = await someone.get(f"/p/opt-out/{bad}")
            assert r.status_code == 404, bad
            r = await someone.post(f"/p/opt-out/{bad}", data={"stamp": "x"})
            assert r.status_code == 403, bad  # no form of ours comes without a page of ours
    assert consent_of(app.runtime.database) == ("granted", 1)
