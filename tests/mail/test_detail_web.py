"""An email detail page's "Send again", its JSON twin, and whose mail the Demo inbox lists."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail import repository
from mailbeacon.models import CopyStatus, Message, OutboxEntry, RecipientCopy, User
from tests.client import make_client, sign_in, use_demo_mailbox
from tests.factories.accounts import create_user
from tests.factories.mail import plan

pytestmark = pytest.mark.asyncio


def _unknown_copy(
    database: Database, app: MailbeaconApp, email: str = "sally@example.com"
) -> tuple[int, int]:
    """A planned send whose one copy ended ``unknown`` (connection lost mid-send)."""
    with database.unit_of_work() as s:
        user = s.scalars(select(User).where(User.email == email)).one()
        message = plan(s, app.runtime, user)
        copy = s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message.id)).one()
        copy.status = CopyStatus.UNKNOWN
        copy.attempts = 1
        copy.smtp_reply = "the connection was lost after the message was sent"
        s.scalars(select(OutboxEntry)).one().completed_at = utcnow()
        return message.id, copy.id


def _status(database: Database, copy_id: int) -> CopyStatus:
    with database.sessions() as s:
        return s.get_one(RecipientCopy, copy_id).status


class _Wakes:
    def __init__(self) -> None:
        self.count = 0

    def wake(self) -> None:
        self.count += 1


async def test_an_unknown_copy_can_be_sent_again_from_the_detail_page(
    client: httpx.AsyncClient, database: Database, app: MailbeaconApp
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    message_id, copy_id = _unknown_copy(database, app)
    wakes = _Wakes()
    app.runtime.outbox = wakes  # type: ignore[assignment]

    page = await client.get(f"/mail/{message_id}")
    assert "Send again" in page.text
    assert "the recipient may or may not have received it" in page.text
    action = f"/mail/{message_id}/copies/{copy_id}/retry"
    assert f'action="{action}"' in page.text

    assert (await client.post(action)).status_code == 403  # no CSRF token
    assert _status(database, copy_id) == CopyStatus.UNKNOWN
    r = await client.post(action, data={"csrf_token": csrf})
    assert r.status_code == 303
    assert r.headers["location"] == f"/mail/{message_id}?notice=resent"
    assert _status(database, copy_id) == CopyStatus.QUEUED
    assert wakes.count == 1
    with database.sessions() as s:
        assert s.scalars(select(OutboxEntry.completed_at)).one() is None
    page = await client.get(r.headers["location"])
    assert "Send again" not in page.text
    # Once queued it is no longer in doubt: a second click sends nothing more.
    r = await client.post(action, data={"csrf_token": csrf})
    assert r.headers["location"] == f"/mail/{message_id}?notice=not-resent"
    assert wakes.count == 1


async def test_only_the_sender_can_send_a_copy_again(
    client: httpx.AsyncClient, database: Database, app: MailbeaconApp
) -> None:
    create_user(database)
    create_user(database, "otto@example.com", name="Otto")
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    message_id, copy_id = _unknown_copy(database, app)
    async with make_client(app, ip="198.51.100.7") as other:
        other_csrf = await sign_in(other, "otto@example.com")
        r = await other.post(
            f"/mail/{message_id}/copies/{copy_id}/retry", data={"csrf_token": other_csrf}
        )
        assert r.status_code == 404
        r = await other.post(
            f"/api/messages/{message_id}/copies/{copy_id}/retry",
            headers={"x-csrf-token": other_csrf},
        )
        assert r.status_code == 404
    # A copy id under another message of the sender's is not found either.
    r = await client.post(
        f"/mail/{message_id + 1}/copies/{copy_id}/retry", data={"csrf_token": csrf}
    )
    assert r.status_code == 404
    assert _status(database, copy_id) == CopyStatus.UNKNOWN


async def test_the_api_sends_an_unknown_copy_again(
    client: httpx.AsyncClient, database: Database, app: MailbeaconApp
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    message_id, copy_id = _unknown_copy(database, app)
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        _, token = account_service.create_api_token(s, user, "script")
    wakes = _Wakes()
    app.runtime.outbox = wakes  # type: ignore[assignment]
    url = f"/api/mail/{message_id}/copies/{copy_id}/retry"
    async with make_client(app) as api:
        auth = {"authorization": f"Bearer {token}"}
        r = await api.post(url, headers=auth)
        assert r.status_code == 202
        (recipient,) = r.json()["recipients"]
        assert (recipient["copy_id"], recipient["status"]) == (copy_id, "queued")
        assert wakes.count == 1
        r = await api.post(url, headers=auth)
        assert r.status_code == 409
        assert "unknown" in r.json()["error"]
        # The path of earlier versions answers the same (a documented, deprecated alias).
        old = f"/api/messages/{message_id}/copies/{copy_id}/retry"
        r = await api.post(old, headers=auth)
        assert r.status_code == 409


def _demo_raw(message: Message, recipient: str) -> bytes:
    return (
        f"From: {message.sender_address}\r\nTo: {recipient}\r\n"
        f"Subject: {message.subject}\r\nMessage-ID: {message.message_id_header}\r\n\r\nHi\r\n"
    ).encode()


async def test_the_demo_inbox_keeps_ones_messages_when_others_send_more(
    client: httpx.AsyncClient, database: Database, app: MailbeaconApp
) -> None:
    create_user(database)
    create_user(database, "otto@example.com", name="Otto")
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    with database.unit_of_work() as s:
        sally = s.scalars(select(User).where(User.email == "sally@example.com")).one()
        otto = s.scalars(select(User).where(User.email == "otto@example.com")).one()
        mine = plan(s, app.runtime, sally, subject="Sally's own")
        account_service.use_demo_mailbox(s, otto, port=2525)
        theirs = plan(s, app.runtime, otto, subject="Otto's")
        conn = s.connection()
        repository.store_demo_message(
            conn,
            mine.sender_address,
            ["ann@example.org"],
            _demo_raw(mine, "ann@example.org"),
            utcnow(),
        )
        # Another user's later mail, more of it than the page shows.
        for _ in range(320):
            repository.store_demo_message(
                conn,
                theirs.sender_address,
                ["ann@example.org"],
                _demo_raw(theirs, "ann@example.org"),
                utcnow(),
            )
    page = await client.get("/demo-inbox")
    assert page.status_code == 200
    assert "Sally&#39;s own" in page.text or "Sally's own" in page.text
    assert "Otto" not in re.sub(r"<header.*?</header>", "", page.text, flags=re.S)
