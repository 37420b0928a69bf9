"""Settings > Webhooks: add an endpoint (its secret shown once), send a test event, and read
how it went in the endpoint's delivery log."""

from __future__ import annotations

import re

import httpx
import pytest

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from tests.client import sign_in
from tests.factories.accounts import create_user
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.asyncio


async def test_a_test_event_sent_from_settings_shows_delivered_in_the_log(
    client: httpx.AsyncClient, database: Database, app: MailbeaconApp
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    page = await client.get("/settings/webhooks")
    assert page.status_code == 200 and 'href="/settings/webhooks" aria-current="page"' in page.text
    async with receiver() as r:
        created = await client.post(
            "/settings/webhooks",
            data={
                "url": r.url,
                "description": "CRM",
                "events": ["copy.opened", "reply.received"],
                "csrf_token": csrf,
            },
        )
        assert created.status_code == 200
        secret = re.search(r'id="new-secret">(whsec_[^<]+)<', created.text)
        assert secret is not None
        listed = await client.get("/settings/webhooks")
        assert secret.group(1) not in listed.text and r.url in listed.text
        endpoint_path = re.search(r'href="(/settings/webhooks/\d+)"', listed.text)
        assert endpoint_path is not None
        sent = await client.post(f"{endpoint_path.group(1)}/test", data={"csrf_token": csrf})
        assert sent.status_code == 303
        await app.runtime.make_webhook_worker().run_once()
        log = await client.get(endpoint_path.group(1))
    [request] = r.app.requests
    assert request.verified(secret.group(1))["type"] == "webhook.test"
    assert "webhook.test" in log.text and ">delivered<" in log.text
    assert request.headers["webhook-id"] in log.text


async def test_a_form_with_a_refused_address_says_why(
    client: httpx.AsyncClient, database: Database
) -> None:
    create_user(database)
    csrf = await sign_in(client)
    r = await client.post(
        "/settings/webhooks",
        data={"url": "https://169.254.169.254/", "events": ["copy.opened"], "csrf_token": csrf},
    )
    assert r.status_code == 422 and "metadata service" in r.text
    r = await client.post(
        "/settings/webhooks", data={"url": "https://crm.example.com/", "csrf_token": csrf}
    )
    assert r.status_code == 422 and "Choose at least one event" in r.text
