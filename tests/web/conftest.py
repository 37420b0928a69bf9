"""The whole ASGI app over httpx, with helpers to sign in like a browser does."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.runtime import Runtime

PASSWORD = "a long enough password"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    application = MailbeaconApp(Runtime.from_settings(settings))
    yield application
    application.runtime.database.dispose()


def make_client(
    app: MailbeaconApp, ip: str = "203.0.113.9", base_url: str = "http://mb.test"
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url)


@pytest_asyncio.fixture
async def client(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    async with make_client(app) as c:
        yield c


def create_user(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    with database.unit_of_work() as s:
        return account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        ).id


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
