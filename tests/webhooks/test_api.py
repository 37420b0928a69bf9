"""The webhooks API: the secret shown once, each user's endpoints their own, the
organisation's for admins only, tokens need the admin scope, addresses vetted on save."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import update

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.errors import InvalidInput
from mailbeacon.models import User, UserRole
from mailbeacon.webhooks.service import check_url
from tests.client import sign_in
from tests.factories.accounts import create_user


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """As an operator leaves them: receivers neither on loopback nor on private networks."""
    return settings.model_copy(update={"ALLOW_LOOPBACK_WEBHOOKS": False})


HOOK = {"url": "https://crm.example.com/hooks", "events": ["copy.opened", "message.sent"]}


async def signed_in(client: httpx.AsyncClient, database: Database, email: str) -> dict[str, str]:
    create_user(database, email=email)
    return {"x-csrf-token": await sign_in(client, email)}


@pytest.mark.asyncio
async def test_the_secret_is_answered_once_and_never_again(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    r = await client.post("/api/webhooks", json=HOOK, headers=csrf)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["secret"].startswith("whsec_") and len(created["secret"]) > 40
    assert r.headers["location"] == f"/api/webhooks/{created['id']}"
    assert created["events"] == ["message.sent", "copy.opened"]
    shown = await client.get(f"/api/webhooks/{created['id']}")
    listed = await client.get("/api/webhooks")
    assert "secret" not in shown.json() and "secret" not in listed.json()[0]
    assert created["secret"] not in shown.text + listed.text


@pytest.mark.asyncio
async def test_endpoints_are_changed_disabled_and_deleted(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    hook = (await client.post("/api/webhooks", json=HOOK, headers=csrf)).json()
    path = f"/api/webhooks/{hook['id']}"
    r = await client.patch(path, json={"enabled": False, "every_open": True}, headers=csrf)
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["every_open"]
    assert r.json()["disabled_reason"]
    r = await client.patch(path, json={"enabled": True}, headers=csrf)
    assert r.json()["enabled"] is True and r.json()["disabled_reason"] == ""
    test = await client.post(f"{path}/test", headers=csrf)
    assert test.status_code == 202 and test.json()["items"][0]["type"] == "webhook.test"
    log = (await client.get(f"{path}/deliveries")).json()
    assert [d["status"] for d in log["items"]] == ["pending"]
    assert (await client.delete(path, headers=csrf)).status_code == 204
    assert (await client.get(path)).status_code == 404


@pytest.mark.asyncio
async def test_another_users_endpoint_is_not_found(
    client: httpx.AsyncClient, database: Database, app: object
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    hook = (await client.post("/api/webhooks", json=HOOK, headers=csrf)).json()
    await client.post("/sign-out", headers=csrf)
    create_user(database, email="mallory@example.com", org="Acme")
    client.cookies.clear()
    csrf = {"x-csrf-token": await sign_in(client, "mallory@example.com")}
    path = f"/api/webhooks/{hook['id']}"
    assert (await client.get(path)).status_code == 404
    assert (await client.get(f"{path}/deliveries")).status_code == 404
    assert (await client.patch(path, json={"enabled": False}, headers=csrf)).status_code == 404
    assert (await client.delete(path, headers=csrf)).status_code == 404
    assert (await client.post(f"{path}/test", headers=csrf)).status_code == 404
    assert (await client.get("/api/webhooks")).json() == []


@pytest.mark.asyncio
async def test_only_an_admin_adds_an_organisations_endpoint(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    with database.unit_of_work() as s:
        s.execute(update(User).values(role=UserRole.MEMBER))
    r = await client.post("/api/webhooks", json={**HOOK, "scope": "organisation"}, headers=csrf)
    assert r.status_code == 403
    with database.unit_of_work() as s:
        s.execute(update(User).values(role=UserRole.ADMIN))
    r = await client.post("/api/webhooks", json={**HOOK, "scope": "organisation"}, headers=csrf)
    assert r.status_code == 201 and r.json()["scope"] == "organisation"


@pytest.mark.asyncio
async def test_an_api_token_needs_the_admin_scope_even_to_read_webhooks(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    tokens = {}
    for scopes in (["read", "send"], ["admin"]):
        page = await client.post(
            "/settings/api-tokens",
            data={
                "name": "crm",
                "scopes": scopes,
                "scopes_offered": "true",
                **{"csrf_token": csrf["x-csrf-token"]},
            },
        )
        tokens[scopes[0]] = page.text.split('id="new-token">')[1].split("<")[0]
    client.cookies.clear()
    reader = {"authorization": f"Bearer {tokens['read']}"}
    admin = {"authorization": f"Bearer {tokens['admin']}"}
    assert (await client.get("/api/webhooks", headers=reader)).status_code == 403
    assert (await client.post("/api/webhooks", json=HOOK, headers=reader)).status_code == 403
    assert (await client.post("/api/webhooks", json=HOOK, headers=admin)).status_code == 201
    assert len((await client.get("/api/webhooks", headers=admin)).json()) == 1


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://crm.example.com/hooks", "https://"),
        ("ftp://crm.example.com/hooks", "https://"),
        ("https://user:pw@crm.example.com/hooks", "user name or password"),
        ("https://169.254.169.254/latest/meta-data/", "metadata"),
        ("https://metadata.google.internal/computeMetadata/v1/", "metadata"),
        ("https://[fe80::1]/hooks", "link-local"),
        ("https://10.0.0.5/hooks", "private network"),
        ("https://127.0.0.1:8000/hooks", "loopback"),
        ("https://[::ffff:169.254.169.254]/", "metadata"),
        ("https:///hooks", "no host"),
        ("https://crm.example.com:0/hooks", "port"),
    ],
)
def test_an_address_the_rules_refuse_is_refused_on_save(
    settings: Settings, url: str, words: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        check_url(url, settings)
    assert words in " ".join(refused.value.errors["url"])


@pytest.mark.asyncio
async def test_the_api_answers_a_refused_address_with_its_reason(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    hook = {**HOOK, "url": "https://169.254.169.254/latest/meta-data/"}
    r = await client.post("/api/webhooks", json=hook, headers=csrf)
    assert r.status_code == 422
    assert "metadata service" in r.json()["errors"]["url"][0]


@pytest.mark.asyncio
async def test_unknown_event_types_are_refused(
    client: httpx.AsyncClient, database: Database
) -> None:
    csrf = await signed_in(client, database, "sally@example.com")
    for events in (["copy.exploded"], ["webhook.test"], []):
        r = await client.post("/api/webhooks", json={**HOOK, "events": events}, headers=csrf)
        assert r.status_code == 422, (events, r.text)
