"""The whole app on the test database (ingest running, so hits on the edge are stored
before it answers), an admin and a member of an organisation that requires consent."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in
from tests.factories.privacy import make_member, make_privacy_admin


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    application = MailbeaconApp(Runtime.from_settings(settings))
    await application.ingest.start()
    yield application
    await application.ingest.stop()
    application.runtime.database.dispose()


@pytest_asyncio.fixture
async def admin(app: MailbeaconApp) -> AsyncIterator[httpx.AsyncClient]:
    """Alice, the admin of Privacy Co, signed in (CSRF header set)."""
    make_privacy_admin(app.runtime.database)
    async with make_client(app) as c:
        c.headers["x-csrf-token"] = await sign_in(c, "alice@example.com")
        yield c


@pytest_asyncio.fixture
async def member(app: MailbeaconApp, admin: httpx.AsyncClient) -> AsyncIterator[httpx.AsyncClient]:
    """Mo, a member of Privacy Co (not an admin), signed in."""
    make_member(app.runtime.database)
    async with make_client(app, ip="198.51.100.20") as c:
        c.headers["x-csrf-token"] = await sign_in(c, "mo@example.com")
        yield c
