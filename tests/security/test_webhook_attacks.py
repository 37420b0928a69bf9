"""Webhooks aimed where they should not go: the server as a proxy into its own networks.

A user types the receiver's URL, and the worker posts there from inside the server's
network with a body it signs. Unchecked, a user could make it post to cloud metadata
services, to services on private networks or on the machine itself, or point a name
at a harmless address on save and at an internal one later (DNS rebinding). Each test
is named after one such attack; none may even open a connection: ``connections``
records every TCP connect of the process and fails the test on any beyond loopback,
and the tests that must not connect at all check there was none. Host names resolve
from the ``hosts`` table (tests/network.py), never through DNS.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from mailbeacon.config import Settings
from mailbeacon.models import DeliveryStatus
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import hit
from tests.factories.mail import send_mail
from tests.network import ConnectionLog, HostTable
from tests.webhooks.conftest import add_endpoint
from tests.webhooks.receiver import receiver
from tests.webhooks.test_delivery import deliveries

pytestmark = pytest.mark.asyncio


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "ALLOW_LOOPBACK_WEBHOOKS": False,
            "DEMO_SMTP_PORT": 0,
            "WEBHOOK_TIMEOUT_SECONDS": 2.0,
        }
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionLog]:
    log = ConnectionLog()
    log.install(monkeypatch)
    yield log
    assert log.outside == [], f"connected beyond loopback: {log.outside}"


async def attempt(runtime: Runtime, url: str) -> str:
    """Save an endpoint at ``url``, make an event for it, run the worker once; the error."""
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    endpoint_id, _ = add_endpoint(runtime, uid, url, ["copy.opened"])
    runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
    await runtime.make_webhook_worker().run_once()
    [delivery] = deliveries(runtime, endpoint_id)
    assert delivery.status == DeliveryStatus.PENDING and delivery.response_status is None
    return delivery.last_error


async def test_a_name_pointing_at_the_metadata_service_is_never_connected_to(
    runtime: Runtime, hosts: HostTable, connections: ConnectionLog
) -> None:
    hosts.add("hooks.example.net", "169.254.169.254")
    error = await attempt(runtime, "https://hooks.example.net/")
    assert "metadata service" in error
    assert connections.attempts == []


async def test_a_name_rebound_to_a_private_address_after_saving_is_never_connected_to(
    runtime: Runtime, hosts: HostTable, connections: ConnectionLog
) -> None:
    # Saved while it pointed somewhere public; by the time of delivery it points inside.
    hosts.add("crm.example.net", "10.1.2.3")
    error = await attempt(runtime, "https://crm.example.net/hooks")
    assert "private network" in error
    assert connections.attempts == []


async def test_a_name_with_one_public_and_one_link_local_address_is_refused_whole(
    runtime: Runtime, hosts: HostTable, connections: ConnectionLog
) -> None:
    hosts.add("mixed.example.net", "93.184.215.14", "fe80::1")
    error = await attempt(runtime, "https://mixed.example.net/hooks")
    assert "link-local" in error
    assert connections.attempts == []


async def test_localhost_is_refused_unless_the_operator_allows_loopback_receivers(
    runtime: Runtime, connections: ConnectionLog
) -> None:
    async with receiver() as r:
        error = await attempt(runtime, f"https://localhost:{r.port}/hooks")
    assert "loopback" in error
    assert r.app.requests == [] and connections.attempts == []


async def test_plain_http_to_a_public_address_is_refused_even_where_http_is_allowed(
    runtime: Runtime, hosts: HostTable, connections: ConnectionLog
) -> None:
    runtime.settings = runtime.settings.model_copy(update={"ALLOW_LOOPBACK_WEBHOOKS": True})
    hosts.add("crm.example.net", "93.184.215.14")
    error = await attempt(runtime, "http://crm.example.net/hooks")
    assert "Plain http" in error
    assert connections.attempts == []


async def test_a_redirect_to_the_metadata_service_is_not_followed(
    runtime: Runtime, connections: ConnectionLog
) -> None:
    runtime.settings = runtime.settings.model_copy(update={"ALLOW_LOOPBACK_WEBHOOKS": True})
    async with receiver() as r:
        r.app.default = 307
        r.app.extra_headers = [(b"location", b"http://169.254.169.254/latest/meta-data/")]
        uid = make_demo_sender(runtime.database)
        copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
        endpoint_id, _ = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        await runtime.make_webhook_worker().run_once()
    [delivery] = deliveries(runtime, endpoint_id)
    assert delivery.status == DeliveryStatus.PENDING and delivery.response_status == 307
    assert len(r.app.requests) == 1
    assert set(connections.attempts) == {"127.0.0.1"}
