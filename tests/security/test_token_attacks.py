"""A leaked API token can do what it was minted for and nothing more, and not forever.

Tokens are minted the way a user does it (Settings > API tokens in a signed-in
browser), then used as a script would: `Authorization: Bearer`, no cookie.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from datetime import timedelta

import httpx
import pytest
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from starlette.routing import BaseRoute

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import ApiToken, MailboxConnection, User
from tests.client import make_client, sign_in
from tests.factories.accounts import create_user

pytestmark = pytest.mark.asyncio

SMTP_FORM = {
    "sender_address": "sally@example.com",
    "smtp_host": "smtp.attacker.example",
    "smtp_port": "587",
    "smtp_security": "starttls",
    "smtp_username": "sally",
    "smtp_password": "hunter2-hunter2",
}


async def mint(client: httpx.AsyncClient, csrf: str, *scopes: str) -> str:
    """A token minted on the Settings page by the signed-in user of ``client``."""
    r = await client.post(
        "/settings/api-tokens",
        data={"csrf_token": csrf, "name": "script", "scopes": list(scopes)},
    )
    assert r.status_code == 200, r.text
    found = re.search(r'id="new-token">([^<]+)<', r.text)
    assert found is not None
    return found.group(1)


def _routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def _changing_routes(app: MailbeaconApp) -> list[tuple[str, str]]:
    """(method, path) of every route that changes something, path parameters filled with 1."""
    return sorted(
        (method, re.sub(r"\{[^}]+\}", "1", route.path))
        for route in _routes(app.web.routes)
        for method in (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}
    )


SENDING = {
    ("POST", "/api/messages"),
    ("POST", "/api/mail/1/copies/1/retry"),
    ("POST", "/api/messages/1/copies/1/retry"),
    ("POST", "/compose"),
    ("POST", "/mail/1/copies/1/retry"),
}
# A script that reads the notification feed may mark what it read (app.TOKEN_SCOPES).
MARKING_READ = {
    ("POST", "/api/notifications/read"),
    ("POST", "/api/notifications/read-all"),
    ("POST", "/api/notifications/1/read"),
}


async def test_a_read_token_cannot_mint_revoke_change_settings_or_send(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    token = await mint(client, csrf, "read")
    listing = (await client.get("/settings/api-tokens")).text
    token_id = re.search(r"/settings/api-tokens/(\d+)/revoke", listing)
    assert token_id is not None
    async with make_client(app, ip="198.51.100.7") as script:
        auth = {"authorization": f"Bearer {token}"}
        assert (await script.get("/api/me", headers=auth)).status_code == 200
        assert (await script.get("/api/mail", headers=auth)).status_code == 200
        attempts = [
            ("POST", "/settings/api-tokens", {"data": {"name": "more", "scopes": ["admin"]}}),
            ("POST", f"/settings/api-tokens/{token_id.group(1)}/revoke", {}),
            ("POST", "/settings/email-sync", {"data": SMTP_FORM}),
            ("POST", "/settings/email-sync/test", {"data": SMTP_FORM}),
            ("POST", "/settings/tracking", {"data": {}}),
            (
                "PUT",
                "/api/notifications/settings",
                {"json": {"notify_tracking": False, "quiet_minutes": 0}},
            ),
            ("POST", "/api/messages", {"json": {"to": ["ann@example.org"], "body_text": "hi"}}),
        ]
        for method, path, body in attempts:
            r = await script.request(method, path, headers=auth, **body)
            assert r.status_code == 403, (method, path, r.status_code)
        r = await script.post("/api/messages", headers=auth, json={"to": ["a@example.org"]})
        assert r.json() == {"error": "This API token does not have the 'send' scope."}
    with database.sessions() as s:
        assert s.scalar(select(func.count()).select_from(ApiToken)) == 1
        assert s.scalars(select(ApiToken)).one().revoked_at is None
        assert s.scalars(select(MailboxConnection)).first() is None
        user = s.scalars(select(User)).one()
        assert user.open_tracking_enabled and user.link_tracking_enabled and user.notify_tracking


async def test_every_route_that_changes_something_is_closed_to_read_and_send_tokens(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    reader, sender = await mint(client, csrf, "read"), await mint(client, csrf, "send")
    routes = _changing_routes(app)
    assert set(routes) >= SENDING
    async with make_client(app) as script:
        for method, path in routes:
            for token, allowed in (
                (reader, (method, path) in MARKING_READ),
                (sender, (method, path) in SENDING),
            ):
                r = await script.request(
                    method,
                    path,
                    headers={"authorization": f"Bearer {token}"},
                    json={"to": ["a@example.org"]},
                )
                if allowed:
                    assert r.status_code != 403, (method, path, r.text)
                else:
                    assert r.status_code == 403, (method, path, r.status_code)


async def test_a_send_token_sends_and_retries(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    token = await mint(client, csrf, "send")
    async with make_client(app) as script:
        auth = {"authorization": f"Bearer {token}"}
        r = await script.post("/api/messages", headers=auth, json={"to": ["a@example.org"]})
        assert r.status_code == 409  # allowed; no mailbox is connected
        r = await script.post("/api/mail/1/copies/1/retry", headers=auth)
        assert r.status_code == 404  # allowed; there is no such copy
        # Sending is not reading.
        assert (await script.get("/api/mail", headers=auth)).status_code == 403


async def test_an_admin_token_may_change_settings(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    token = await mint(client, csrf, "admin")
    async with make_client(app) as script:
        r = await script.put(
            "/api/notifications/settings",
            headers={"authorization": f"Bearer {token}"},
            json={"notify_tracking": False, "quiet_minutes": 5},
        )
        assert r.status_code == 200
    with database.sessions() as s:
        assert s.scalars(select(User)).one().notify_tracking is False


async def test_an_expired_token_signs_nobody_in(app: MailbeaconApp, database: Database) -> None:
    user_id = create_user(database)
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        _, old = account_service.create_api_token(
            s, user, "old", ["read"], expires_in_days=1, now=utcnow() - timedelta(days=1, seconds=1)
        )
        _, fresh = account_service.create_api_token(s, user, "fresh", ["read"], expires_in_days=1)
    async with make_client(app) as script:
        r = await script.get("/api/me", headers={"authorization": f"Bearer {old}"})
        assert r.status_code == 401
        r = await script.get("/api/me", headers={"authorization": f"Bearer {fresh}"})
        assert r.status_code == 200


async def test_the_api_documents_the_scope_of_every_operation(client: httpx.AsyncClient) -> None:
    everything = (await client.get("/api/openapi.json")).json()["paths"]
    assert "x-token-scope" not in everything["/healthz"]["get"]  # anyone may ask
    paths = {path: ops for path, ops in everything.items() if path.startswith("/api/")}
    scopes = {
        (method.upper(), path): operation["x-token-scope"]
        for path, operations in paths.items()
        for method, operation in operations.items()
    }
    assert scopes[("POST", "/api/messages")] == "send"
    assert scopes[("POST", "/api/mail/{message_id}/copies/{copy_id}/retry")] == "send"
    assert scopes[("GET", "/api/me")] == "read"
    assert scopes[("GET", "/api/mail")] == "read"
    assert scopes[("PUT", "/api/notifications/settings")] == "admin"
    assert set(scopes.values()) == {"read", "send", "admin"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            assert f"API token scope: `{operation['x-token-scope']}`" in operation["description"], (
                method,
                path,
            )
