"""X-Forwarded-For entries a client writes itself change nothing.

Behind N trusted proxies only the last N entries were written by them; the client
is the address the outermost of them saw, the N-th entry from the right. The
tracking edge (what is stored with a hit) and sign-in (what is throttled) read
it the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import TrackingEvent
from mailbeacon.runtime import Runtime
from tests.client import csrf_of, make_client
from tests.factories.accounts import PASSWORD, create_user, make_user
from tests.factories.mail import make_message

PROXY = "10.0.0.2"  # the peer of every request: the nearest proxy


@pytest.mark.parametrize(
    ("trusted", "headers", "client"),
    [
        (0, ["203.0.113.7"], PROXY),  # no proxy trusted: the header is the client's own
        (1, ["203.0.113.7"], "203.0.113.7"),
        (1, ["6.6.6.6, 203.0.113.7"], "203.0.113.7"),
        (1, ["6.6.6.6", "203.0.113.7"], "203.0.113.7"),  # several headers read as one list
        (2, ["6.6.6.6, 203.0.113.7, 10.0.0.9"], "203.0.113.7"),
        (2, ["6.6.6.6", "203.0.113.7, 10.0.0.9"], "203.0.113.7"),
        (2, ["10.0.0.9"], PROXY),  # fewer entries than proxies: not the way we were told
        (1, ["6.6.6.6, not-an-address"], PROXY),
        (1, ["6.6.6.6, [2001:db8::7]:4711"], "2001:db8::7"),
        (1, ["6.6.6.6, 203.0.113.7:4711"], "203.0.113.7"),
        (1, [], PROXY),
    ],
)
def test_only_entries_written_by_trusted_proxies_are_read(
    trusted: int, headers: list[str], client: str
) -> None:
    from mailbeacon.kit.net import client_address

    assert client_address(PROXY, headers, trusted) == client


def test_trust_forwarded_for_still_means_one_proxy() -> None:
    assert Settings(TRUST_FORWARDED_FOR=True).proxy_hops == 1
    assert Settings(TRUST_FORWARDED_FOR=True, TRUSTED_PROXIES=2).proxy_hops == 2
    assert Settings().proxy_hops == 0
    # Copies of the settings skip validators: they must agree all the same.
    assert Settings().model_copy(update={"TRUST_FORWARDED_FOR": True}).proxy_hops == 1


@pytest_asyncio.fixture
async def proxied(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    """The app behind one proxy, configured the deprecated way (TRUST_FORWARDED_FOR)."""
    application = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"TRUST_FORWARDED_FOR": True}))
    )
    await application.ingest.start()
    yield application
    await application.ingest.stop()
    application.runtime.database.dispose()


@pytest.mark.asyncio
async def test_a_spoofed_leftmost_entry_is_not_stored_with_a_hit(
    proxied: MailbeaconApp, database: Database
) -> None:
    with database.unit_of_work() as s:
        _, (copy,) = make_message(s, make_user(s))
        copy_id = copy.id
    token = proxied.runtime.codec.mint_open_token(copy_id)
    async with make_client(proxied, ip=PROXY) as c:
        r = await c.get(
            f"/t/o/{token}.gif",
            headers={"x-forwarded-for": "6.6.6.6, 203.0.113.77", "user-agent": "Thunderbird"},
        )
    assert r.status_code == 200
    with database.sessions() as s:
        event = s.scalars(select(TrackingEvent)).one()
    assert event.ip_prefix == "203.0.113.0/24"


@pytest.mark.asyncio
async def test_rotating_spoofed_entries_does_not_dodge_the_sign_in_throttle(
    settings: Settings, database: Database
) -> None:
    create_user(database)
    application = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"TRUSTED_PROXIES": 2}))
    )
    try:
        async with make_client(application, ip=PROXY) as c:
            token = csrf_of((await c.get("/sign-in")).text)

            async def attempt(forwarded: str, password: str) -> httpx.Response:
                return await c.post(
                    "/sign-in",
                    data={"email": "sally@example.com", "password": password, "csrf_token": token},
                    headers={"x-forwarded-for": forwarded},
                )

            # The attacker at 198.51.100.7 makes up a new leftmost entry each time; the
            # outer proxy (10.0.0.9) appends what it saw.
            statuses = [
                (
                    await attempt(f"192.0.2.{i}, 198.51.100.7, 10.0.0.9", f"guess {i} guess")
                ).status_code
                for i in range(6)
            ]
            assert statuses == [401, 401, 401, 429, 429, 429]
            # The owner, elsewhere, is not held up by it.
            r = await attempt("203.0.113.50, 10.0.0.9", PASSWORD)
            assert r.status_code == 303
    finally:
        application.runtime.database.dispose()
