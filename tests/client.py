"""The whole ASGI app over httpx, with helpers to sign in like a browser does.

The `app` and `client` fixtures (tests/conftest.py) build on these.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable

import httpx

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.tracking.edge import Receive, Scope, Send
from tests.factories.accounts import PASSWORD

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def stored_before_answer(app: MailbeaconApp) -> ASGIApp:
    """The app, but a tracking request's answer reaches the test only once its hit is stored.

    The edge answers as soon as the hit is in the journal; the consumer stores it a
    moment later. Tests that look in the database right after a pixel or a click
    wait for that moment here (``Ingest.settle``), not with a sleep. httpx hands the
    response over only when the ASGI call returns.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        await app(scope, receive, send)
        if scope["type"] == "http" and scope["path"].startswith("/t/"):
            await app.ingest.settle()

    return wrapped


def make_client(
    app: MailbeaconApp, ip: str = "203.0.113.9", base_url: str = "http://mb.test"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=stored_before_answer(app), client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


async def sign_in(client: httpx.AsyncClient, email: str = "sally@example.com") -> str:
    """Sign in through the form; returns the session's CSRF token."""
    page = await client.get("/sign-in")
    r = await client.post(
        "/sign-in", data={"email": email, "password": PASSWORD, "csrf_token": csrf_of(page.text)}
    )
    assert r.status_code == 303, r.text
    return csrf_of((await client.get("/settings/email-sync")).text)


async def use_demo_mailbox(client: httpx.AsyncClient, csrf: str) -> None:
    r = await client.post("/settings/email-sync/demo", data={"csrf_token": csrf})
    assert r.status_code == 303
