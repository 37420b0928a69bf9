"""Sign-in, sign-out, cookies, CSRF and API tokens through the real app."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator, Sequence

import httpx
import pytest
import pytest_asyncio
from fastapi.routing import APIRoute
from sqlalchemy import func, select
from starlette.routing import BaseRoute

from mailbeacon.accounts.security import ACCOUNT_NETWORK_BACKOFF
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import UserSession
from mailbeacon.runtime import Runtime
from tests.client import csrf_of, make_client, sign_in
from tests.factories.accounts import PASSWORD, create_user

pytestmark = pytest.mark.asyncio


def cookie_header(response: httpx.Response, name: str) -> str:
    for value in response.headers.get_list("set-cookie"):
        if value.startswith(f"{name}="):
            return value
    raise AssertionError(f"no Set-Cookie for {name}: {response.headers.get_list('set-cookie')}")


@pytest.mark.parametrize(
    "path",
    [
        "/compose",
        "/mail",
        "/mail/1",
        "/demo-inbox",
        "/demo-inbox/1",
        "/settings/email-sync",
        "/settings/api-tokens",
        "/",
    ],
)
async def test_every_page_but_sign_in_needs_a_signed_in_user(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/sign-in")


@pytest.mark.parametrize("path", ["/api/me", "/api/mail/1"])
async def test_the_api_answers_401_without_credentials(
    client: httpx.AsyncClient, path: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "error" in r.json()
    r = await client.get(path, headers={"authorization": "Bearer mb_not-a-real-token"})
    assert r.status_code == 401


async def test_sign_in_sets_the_session_and_viewer_cookies_and_sign_out_clears_them(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    user_id = create_user(database)
    page = await client.get("/sign-in?next=/mail")
    assert page.status_code == 200
    assert 'type="password"' in page.text
    r = await client.post(
        "/sign-in",
        data={
            "email": "sally@example.com",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": "/mail",
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/mail"
    session_cookie = cookie_header(r, "mb_session")
    for attribute in ("HttpOnly", "Path=/", "SameSite=lax"):
        assert attribute.lower() in session_cookie.lower()
    assert "secure" not in session_cookie.lower()  # BASE_URL is plain http here
    viewer_cookie = cookie_header(r, "mb_viewer")
    assert "path=/t/" in viewer_cookie.lower()
    assert "httponly" in viewer_cookie.lower()
    assert "samesite=lax" in viewer_cookie.lower()
    viewer_token = viewer_cookie.split(";", 1)[0].split("=", 1)[1]
    assert app.runtime.codec.read_viewer_token(viewer_token) == user_id

    page = await client.get("/compose")
    assert page.status_code == 200
    assert "Sally" in page.text
    r = await client.post("/sign-out", data={"csrf_token": csrf_of(page.text)})
    assert r.status_code == 303
    assert "max-age=0" in cookie_header(r, "mb_session").lower()
    cleared = cookie_header(r, "mb_viewer").lower()
    assert "max-age=0" in cleared
    assert "path=/t/" in cleared
    with database.sessions() as s:
        assert s.scalar(select(func.count()).select_from(UserSession)) == 0
    assert (await client.get("/compose")).status_code == 303


@pytest_asyncio.fixture
async def https_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    application = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"BASE_URL": "https://mail.example.com"}))
    )
    async with make_client(application, base_url="https://mb.test") as c:
        yield c
    application.runtime.database.dispose()


async def test_cookies_are_secure_behind_https(
    https_client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    page = await https_client.get("/sign-in")
    assert "secure" in cookie_header(page, "mb_csrf").lower()
    r = await https_client.post(
        "/sign-in",
        data={"email": "sally@example.com", "password": PASSWORD, "csrf_token": csrf_of(page.text)},
    )
    assert r.status_code == 303
    assert "secure" in cookie_header(r, "mb_session").lower()
    assert "secure" in cookie_header(r, "mb_viewer").lower()


async def test_a_wrong_password_says_so_and_keeps_the_email(
    client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    page = await client.get("/sign-in")
    r = await client.post(
        "/sign-in",
        data={
            "email": "sally@example.com",
            "password": "nope nope",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert r.status_code == 401
    assert "Wrong email or password." in r.text
    assert 'value="sally@example.com"' in r.text
    assert "mb_session" not in r.headers.get("set-cookie", "")
    assert (await client.get("/compose")).status_code == 303


async def test_repeated_failures_are_throttled_with_a_clear_message(
    client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    token = csrf_of((await client.get("/sign-in")).text)
    for _ in range(ACCOUNT_NETWORK_BACKOFF.free_failures):
        r = await client.post(
            "/sign-in",
            data={"email": "sally@example.com", "password": "wrong password", "csrf_token": token},
        )
        assert r.status_code == 401
        assert "Wrong email or password." in r.text
    r = await client.post(
        "/sign-in", data={"email": "sally@example.com", "password": PASSWORD, "csrf_token": token}
    )
    assert r.status_code == 429
    assert r.headers["retry-after"] == "5"
    assert "Too many attempts, try again in 5 seconds." in r.text
    assert "mb_session" not in r.headers.get("set-cookie", "")


@pytest.mark.parametrize("token", [None, "", "wrong-token-wrong-token-wrong"])
async def test_sign_in_without_the_right_csrf_token_is_refused(
    client: httpx.AsyncClient, database: Database, token: str | None
) -> None:
    create_user(database)
    await client.get("/sign-in")  # sets the form's cookie
    data = {"email": "sally@example.com", "password": PASSWORD}
    if token is not None:
        data["csrf_token"] = token
    r = await client.post("/sign-in", data=data)
    assert r.status_code == 403
    assert "mb_session" not in r.headers.get("set-cookie", "")


def _api_routes(routes: Sequence[BaseRoute]) -> Iterator[APIRoute]:
    for route in routes:
        # Newer FastAPI keeps included routers whole (the router is kept on the route).
        included = getattr(route, "original_router", None)
        if included is not None:
            yield from _api_routes(included.routes)
        elif isinstance(route, APIRoute):
            yield route


def _state_changing_routes(app: MailbeaconApp) -> list[tuple[str, str]]:
    """(method, path) of every route that changes state, path parameters filled with 1."""
    return sorted(
        (method, re.sub(r"\{[^}]+\}", "1", route.path))
        for route in _api_routes(app.web.routes)
        for method in (route.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}
    )


async def test_every_state_changing_request_of_a_session_needs_its_csrf_token(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    good = await sign_in(client)
    routes = [r for r in _state_changing_routes(app) if r[1] != "/sign-in"]
    assert {
        ("POST", "/compose"),
        ("POST", "/sign-out"),
        ("POST", "/settings/email-sync"),
        ("POST", "/settings/tracking"),
        ("POST", "/api/messages"),
    } <= set(routes)
    for method, path in routes:
        for attempt in ({}, {"csrf_token": "x" * 43}):
            r = await client.request(method, path, data={**attempt, "to": "a@example.org"})
            assert r.status_code == 403, (method, path, attempt, r.status_code)
        r = await client.request(
            method, path, json={"to": ["a@example.org"]}, headers={"x-csrf-token": good[:-1]}
        )
        assert r.status_code == 403, (method, path)
    # Nothing changed, and the session still works.
    page = await client.get("/settings/email-sync")
    assert page.status_code == 200
    assert "checked" in page.text
    r = await client.post(
        "/api/messages", json={"to": ["a@example.org"]}, headers={"x-csrf-token": good}
    )
    assert r.status_code == 409  # past the CSRF check: no mailbox yet


@pytest.mark.parametrize(
    "target", ["//evil.example/", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"]
)
async def test_sign_in_never_redirects_off_site(
    client: httpx.AsyncClient, database: Database, target: str
) -> None:
    create_user(database)
    page = await client.get("/sign-in")
    r = await client.post(
        "/sign-in",
        data={
            "email": "sally@example.com",
            "password": PASSWORD,
            "csrf_token": csrf_of(page.text),
            "next": target,
        },
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/compose"


async def test_api_tokens_work_without_csrf_until_revoked(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    r = await client.post(
        "/settings/api-tokens",
        data={"csrf_token": csrf, "name": "CRM sync", "scopes": ["read", "send"]},
    )
    assert r.status_code == 200
    plain = re.search(r'id="new-token">([^<]+)<', r.text)
    assert plain is not None
    token = plain.group(1)
    async with make_client(app) as script:
        auth = {"authorization": f"Bearer {token}"}
        me = await script.get("/api/me", headers=auth)
        assert me.status_code == 200
        assert me.json()["email"] == "sally@example.com"
        assert me.json()["compose_defaults"]["open_tracking"] is True
        # Bearer requests need no CSRF token (browsers never add the header themselves).
        r = await script.post("/api/messages", json={"to": "ann@example.org"}, headers=auth)
        assert r.status_code == 409
        listing = await client.get("/settings/api-tokens")
        assert token not in listing.text
        assert "CRM sync" in listing.text
        token_id = re.search(r"/settings/api-tokens/(\d+)/revoke", listing.text)
        assert token_id is not None
        r = await client.post(
            f"/settings/api-tokens/{token_id.group(1)}/revoke", data={"csrf_token": csrf}
        )
        assert r.status_code == 303
        assert (await script.get("/api/me", headers=auth)).status_code == 401
