"""A fresh server opens on "Create your account"; admins invite colleagues with a link;
pages show times in the viewer's zone. Through the real app, on both databases."""

from __future__ import annotations

import re
from datetime import timedelta

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import Invitation, User, UserRole
from tests.client import csrf_of, make_client
from tests.factories.accounts import PASSWORD

pytestmark = pytest.mark.asyncio

LINK = re.compile(r'id="invite-link">(http://mb\.test/invite/[A-Za-z0-9_-]+)<')


async def create_account(client: httpx.AsyncClient, **fields: str) -> httpx.Response:
    page = await client.get("/create-account")
    assert page.status_code == 200, page.text
    data = {
        "name": "Sally Seller",
        "email": "sally@example.com",
        "password": PASSWORD,
        "organisation": "Acme",
        "csrf_token": csrf_of(page.text),
        **fields,
    }
    return await client.post("/create-account", data=data)


async def test_a_fresh_server_opens_on_create_your_account(
    client: httpx.AsyncClient, app: MailbeaconApp
) -> None:
    r = await client.get("/", follow_redirects=True)
    assert str(r.url) == "http://mb.test/create-account"
    assert "<h1>Create your account</h1>" in r.text
    for label in ("Name", "Email", "Password", "Organisation name (optional)"):
        assert f">{label}</label>" in r.text

    weak = await create_account(client, password="password1")
    assert weak.status_code == 422
    assert "too easy to guess" in weak.text or "at least 10" in weak.text

    r = await create_account(client)
    assert r.status_code == 303
    assert r.headers["location"] == "/settings/email-sync?notice=welcome"
    welcome = await client.get(r.headers["location"])
    assert "use the demo mailbox" in welcome.text
    with app.runtime.database.unit_of_work(immediate=False) as s:
        user = s.scalars(select(User)).one()
        assert user.role == UserRole.ADMIN
        assert user.display_name == "Sally Seller"

    # Once a user exists the page is gone: for this browser, and for anyone else.
    assert (await client.get("/create-account")).headers["location"] == "/compose"
    async with make_client(app, ip="203.0.113.50") as other:
        assert (await other.get("/create-account")).headers["location"] == "/sign-in"
        sign_in_page = await other.get("/sign-in")
        assert sign_in_page.status_code == 200
        # A form left open in another tab since before the first account was made.
        late = await other.post(
            "/create-account",
            data={
                "name": "Mallory",
                "email": "mallory@example.com",
                "password": PASSWORD,
                "csrf_token": csrf_of(sign_in_page.text),
            },
        )
        assert late.status_code == 303
        assert late.headers["location"] == "/sign-in?notice=exists"
    with app.runtime.database.unit_of_work(immediate=False) as s:
        assert len(s.scalars(select(User)).all()) == 1


async def test_create_account_needs_the_forms_csrf_token(client: httpx.AsyncClient) -> None:
    await client.get("/create-account")
    r = await client.post(
        "/create-account",
        data={"name": "X", "email": "x@example.com", "password": PASSWORD, "csrf_token": "no"},
    )
    assert r.status_code == 403


async def test_an_admin_invites_a_colleague_with_a_link_that_works_once(
    client: httpx.AsyncClient, app: MailbeaconApp
) -> None:
    await create_account(client)
    settings = await client.get("/settings/account")
    assert "Colleagues" in settings.text
    r = await client.post(
        "/settings/account/invitations",
        data={"email": "otto@example.com", "csrf_token": csrf_of(settings.text)},
    )
    assert r.status_code == 200
    found = LINK.search(r.text)
    assert found, r.text
    link = found.group(1).removeprefix("http://mb.test")
    # Shown once: the page does not show it again.
    assert found.group(1) not in (await client.get("/settings/account")).text

    async with make_client(app, ip="203.0.113.51") as otto:
        page = await otto.get(link)
        assert page.status_code == 200
        assert "otto@example.com" in page.text
        joined = await otto.post(
            link, data={"name": "Otto", "password": PASSWORD, "csrf_token": csrf_of(page.text)}
        )
        assert joined.status_code == 303, joined.text
        me = (await otto.get("/api/me")).json()
        assert me["email"] == "otto@example.com"
        # A member sees no invitations section.
        assert "Colleagues" not in (await otto.get("/settings/account")).text
    async with make_client(app, ip="203.0.113.52") as again:
        assert (await again.get(link)).status_code == 404
    with app.runtime.database.unit_of_work(immediate=False) as s:
        otto_user = s.scalars(select(User).where(User.email == "otto@example.com")).one()
        sally = s.scalars(select(User).where(User.email == "sally@example.com")).one()
        assert otto_user.role == UserRole.MEMBER
        assert otto_user.organisation_id == sally.organisation_id


async def test_an_expired_invitation_link_is_refused(
    client: httpx.AsyncClient, app: MailbeaconApp
) -> None:
    await create_account(client)
    settings = await client.get("/settings/account")
    r = await client.post(
        "/settings/account/invitations",
        data={"email": "late@example.com", "csrf_token": csrf_of(settings.text)},
    )
    found = LINK.search(r.text)
    assert found
    with app.runtime.database.unit_of_work() as s:
        s.scalars(select(Invitation)).one().expires_at = utcnow() - timedelta(seconds=1)
    async with make_client(app, ip="203.0.113.53") as late:
        page = await late.get(found.group(1).removeprefix("http://mb.test"))
        assert page.status_code == 404
        assert "not valid any more" in page.text


async def test_pages_show_times_in_the_viewers_zone(
    client: httpx.AsyncClient, app: MailbeaconApp
) -> None:
    await create_account(client)
    page = await client.get("/settings/account")
    # No zone yet: the page asks the browser for it.
    assert "data-detect-zone" in page.text
    csrf = csrf_of(page.text)
    r = await client.post(
        "/settings/account/time-zone",
        data={"time_zone": "America/New_York"},
        headers={"x-csrf-token": csrf, "x-requested-with": "fetch"},
    )
    assert r.status_code == 204
    r = await client.post(
        "/settings/account/time-zone", data={"time_zone": "Nowhere/Else", "csrf_token": csrf}
    )
    assert r.status_code == 422
    # An invitation's expiry, seven days from now, in New York time.
    r = await client.post(
        "/settings/account/invitations", data={"email": "ny@example.com", "csrf_token": csrf}
    )
    page = await client.get("/settings/account")
    assert "data-detect-zone" not in page.text
    assert 'data-time-zone="America/New_York"' in page.text
    with app.runtime.database.unit_of_work(immediate=False) as s:
        expires = s.scalars(select(Invitation)).one().expires_at
    from zoneinfo import ZoneInfo

    local = expires.astimezone(ZoneInfo("America/New_York"))
    assert f'{local:%H:%M}:{local:%S} {local.tzname()}"' in page.text
