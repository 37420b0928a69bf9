"""An https receiver is reached at the vetted address while TLS checks its certificate
against the host name in the URL (also sent as SNI and in the Host header): a certificate
for another name is refused, though the address is the same."""

from __future__ import annotations

import ssl
import time
from pathlib import Path

import pytest
import trustme

from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import hit
from tests.factories.mail import send_mail
from tests.network import HostTable
from tests.webhooks.conftest import add_endpoint
from tests.webhooks.receiver import receiver
from tests.webhooks.test_delivery import deliveries

pytestmark = pytest.mark.asyncio


def serving_as(ca: trustme.CA, name: str, folder: Path) -> dict[str, str]:
    cert = ca.issue_cert(name)
    certfile, keyfile = folder / f"{name}.pem", folder / f"{name}.key"
    cert.cert_chain_pems[0].write_to_path(certfile)
    cert.private_key_pem.write_to_path(keyfile)
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ca.configure_trust(context)
    return context


@pytest.mark.parametrize(
    ("certified", "delivered"), [("hooks.example.test", True), ("other.example.test", False)]
)
async def test_tls_checks_the_certificate_against_the_urls_host_name(
    runtime: Runtime, hosts: HostTable, tmp_path: Path, certified: str, delivered: bool
) -> None:
    ca = trustme.CA()
    hosts.add("hooks.example.test", "127.0.0.1")
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver(**serving_as(ca, certified, tmp_path)) as r:
        url = f"https://hooks.example.test:{r.port}/hooks"
        endpoint_id, secret = add_endpoint(runtime, uid, url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        await runtime.make_webhook_worker(verify=trusting(ca)).run_once()
    [delivery] = deliveries(runtime, endpoint_id)
    if delivered:
        [request] = r.app.requests
        assert request.headers["host"] == f"hooks.example.test:{r.port}"
        assert request.verified(secret)["type"] == "copy.opened"
        assert delivery.response_status == 204
    else:
        assert r.app.requests == []
        assert (
            delivery.response_status is None and "CERTIFICATE_VERIFY_FAILED" in delivery.last_error
        )
