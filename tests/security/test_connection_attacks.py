"""The app as a port scanner: "Test connection", sending and IMAP aimed where they should not go.

Settings > Email sync connects to whatever host and port a user types and reports what it
found. Unchecked, any user could map the networks the server sits in (refused, silent and
non-TLS ports read differently), read other services' banners through the answer (an SSH
daemon's "SSH-2.0-OpenSSH_..." line), and reach cloud metadata services. Each test is named
after one such attack.

Every test runs with ``connections`` watching the process: a TCP connect to anything but
loopback is refused and recorded, and the test fails. Host names resolve from the ``hosts``
table (tests/network.py), never through DNS.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.netpolicy import AddressPolicy, mail_server_policy
from mailbeacon.models import CopyStatus, MailboxConnection, RecipientCopy, Security, User
from mailbeacon.runtime import Runtime
from mailbeacon.sync.imap import ImapSettings, Stage, test_imap_connection
from tests.client import make_client, sign_in
from tests.factories.accounts import create_user, make_smtp_sender
from tests.factories.mail import plan
from tests.network import SSH_BANNER, ConnectionLog, HostTable, fake_service

pytestmark = pytest.mark.asyncio

PRIVATE = "This address is on a private network; the operator has not allowed private mail servers."
LOOPBACK = (
    "is this machine itself (loopback); the operator has not allowed mail servers on this machine."
)
METADATA = "metadata service; mailbeacon never connects to it."
LINK_LOCAL = "is link-local (169.254.0.0/16 or fe80::/10); mailbeacon never connects"
FORM = {
    "sender_name": "Mallory",
    "sender_address": "mallory@example.com",
    "smtp_username": "",
    "smtp_password": "",
}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings (loopback mail servers allowed, private networks not), with
    answers awaited for one second: silent services time out quickly."""
    return settings.model_copy(update={"SEND_TIMEOUT_SECONDS": 1.0})


@pytest.fixture
def connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectionLog]:
    log = ConnectionLog()
    log.install(monkeypatch)
    yield log
    assert log.outside == [], f"connected beyond loopback: {log.outside}"


@pytest_asyncio.fixture
async def signed_in(client: httpx.AsyncClient, database: Database) -> str:
    create_user(database, email="mallory@example.com")
    return await sign_in(client, "mallory@example.com")


@asynccontextmanager
async def browser(
    settings: Settings, **changes: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """Mallory signed in on an app whose settings differ by ``changes``."""
    application = MailbeaconApp(Runtime.from_settings(settings.model_copy(update=changes)))
    try:
        async with make_client(application) as c:
            yield c, await sign_in(c, "mallory@example.com")
    finally:
        application.runtime.database.dispose()


def store_mailbox(database: Database, host: str, port: int, security: Security) -> None:
    """A connection as saved before the address policy existed (or by an earlier setting)."""
    with database.unit_of_work() as s:
        user = s.scalars(select(User).where(User.email == "mallory@example.com")).one()
        for old in s.scalars(select(MailboxConnection).where(MailboxConnection.user_id == user.id)):
            s.delete(old)
        s.flush()
        s.add(
            MailboxConnection(
                user_id=user.id,
                sender_name="Mallory",
                sender_address="mallory@example.com",
                smtp_host=host,
                smtp_port=port,
                smtp_security=security,
                smtp_username="",
                smtp_password_encrypted="",
            )
        )


def last_test_result(database: Database) -> str:
    with database.sessions() as s:
        return s.scalars(select(MailboxConnection.last_test_result)).one()


@pytest.mark.parametrize("port", [22, 25, 3306, 6379])
async def test_port_scan_of_a_private_network_gets_one_sentence_and_no_packet(
    port: int,
    client: httpx.AsyncClient,
    signed_in: str,
    database: Database,
    connections: ConnectionLog,
) -> None:
    typed = {**FORM, "smtp_host": "10.1.2.3", "smtp_port": str(port), "smtp_security": "tls"}
    r = await client.post("/settings/email-sync/test", data={**typed, "csrf_token": signed_in})
    assert r.status_code == 422
    assert PRIVATE in r.text
    # Saved before the rule existed: tried, refused before connecting, the same for every port.
    store_mailbox(database, "10.1.2.3", port, Security.STARTTLS)
    r = await client.post("/settings/email-sync/test", data={"csrf_token": signed_in})
    assert r.status_code == 422
    assert last_test_result(database) == f"Cannot connect. {PRIVATE}"
    assert connections.attempts == []


@pytest.mark.parametrize(
    ("host", "words"),
    [
        ("169.254.169.254", METADATA),  # AWS, Azure, GCE, OCI, DigitalOcean, OpenStack
        ("fd00:ec2::254", METADATA),  # AWS over IPv6
        ("100.100.100.200", METADATA),  # Alibaba Cloud
        ("192.0.0.192", METADATA),  # Oracle Cloud Classic
        ("168.63.129.16", METADATA),  # Azure WireServer
        ("metadata.google.internal", METADATA),
        ("imds.attacker.test", METADATA),  # a name of the attacker's, pointing there
        ("2852039166", METADATA),  # 169.254.169.254 written as one number
        ("::ffff:169.254.169.254", METADATA),
        ("169.254.1.1", LINK_LOCAL),
        ("fe80::1", LINK_LOCAL),
        ("64:ff9b::a9fe:101", LINK_LOCAL),  # NAT64 for 169.254.1.1
        ("2002:a9fe:101::1", LINK_LOCAL),  # 6to4 for 169.254.1.1
    ],
)
async def test_cloud_metadata_and_link_local_probes_fail_even_with_private_networks_allowed(
    host: str,
    words: str,
    settings: Settings,
    signed_in: str,
    database: Database,
    hosts: HostTable,
    connections: ConnectionLog,
) -> None:
    hosts.add("imds.attacker.test", "169.254.169.254")
    async with browser(settings, ALLOW_PRIVATE_NETWORKS=True) as (c, csrf):
        typed = {**FORM, "smtp_host": host, "smtp_port": "80", "smtp_security": "tls"}
        r = await c.post("/settings/email-sync", data={**typed, "csrf_token": csrf})
        assert r.status_code == 422
        assert words in r.text
        store_mailbox(database, host, 80, Security.TLS)
        r = await c.post("/settings/email-sync/test", data={"csrf_token": csrf})
        assert r.status_code == 422
    assert words in last_test_result(database)
    assert connections.attempts == []


async def test_a_name_pointing_inside_beside_a_public_address_is_refused(
    client: httpx.AsyncClient,
    signed_in: str,
    database: Database,
    hosts: HostTable,
    connections: ConnectionLog,
) -> None:
    # Were only one address checked, the order of the DNS answers would pick the target.
    hosts.add("mx.attacker.test", "93.184.215.14", "10.0.0.7")
    typed = {**FORM, "smtp_host": "mx.attacker.test", "smtp_port": "25", "smtp_security": "tls"}
    r = await client.post("/settings/email-sync", data={**typed, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "This host name points to an address that is on a private network" in r.text
    store_mailbox(database, "mx.attacker.test", 25, Security.TLS)
    await client.post("/settings/email-sync/test", data={"csrf_token": signed_in})
    assert "on a private network" in last_test_result(database)
    assert connections.attempts == []


async def test_dns_rebinding_cannot_steer_test_connection_to_an_inside_address(
    client: httpx.AsyncClient,
    signed_in: str,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    connections: ConnectionLog,
) -> None:
    """The attacker's name answers 127.0.0.1 (allowed here) once, then an inside address."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(object(), loop=loop), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    answers = ["127.0.0.1"]

    def rebinding(host: Any, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host != "rebind.attacker.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        address = answers.pop(0) if answers else "10.0.0.9"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    typed = {
        **FORM,
        "smtp_host": "rebind.attacker.test",
        "smtp_port": str(port),
        "smtp_security": "starttls",
    }
    try:
        r = await client.post("/settings/email-sync/test", data={**typed, "csrf_token": signed_in})
    finally:
        server.close()
        await server.wait_closed()
    assert r.status_code == 422
    # Whatever was looked up last is what was checked, and only a checked address is
    # connected to: here the lookup made for the connection pointed inside.
    assert set(connections.attempts) <= {"127.0.0.1"}
    assert "on a private network" in last_test_result(database)


@pytest.mark.parametrize("security", ["none", "tls"])
async def test_banner_grabbing_through_test_connection_reveals_nothing(
    security: str,
    client: httpx.AsyncClient,
    signed_in: str,
    database: Database,
    connections: ConnectionLog,
) -> None:
    """An SSH daemon on an allowed address reads exactly like a port that never answers."""
    answers = []
    for banner in (SSH_BANNER, None):
        with fake_service(banner) as port:
            typed = {
                **FORM,
                "smtp_host": "127.0.0.1",
                "smtp_port": str(port),
                "smtp_security": security,
            }
            r = await client.post(
                "/settings/email-sync/test", data={**typed, "csrf_token": signed_in}
            )
        assert r.status_code == 422
        stored = last_test_result(database)
        for text in (r.text, stored):
            assert "SSH-2.0" not in text and "OpenSSH" not in text and "Malformed" not in text
        answers.append(stored.replace(f":{port}", ":PORT"))
    assert answers[0] == answers[1]
    assert connections.outside == []


@pytest.mark.parametrize(
    "host",
    ["127.0.0.1", "localhost", "[::1]", "127.1", "2130706433", "0x7f.1", "[::ffff:127.0.0.1]"],
)
async def test_services_on_this_machine_cannot_be_probed_by_default(
    host: str,
    settings: Settings,
    signed_in: str,
    database: Database,
    connections: ConnectionLog,
) -> None:
    with fake_service(SSH_BANNER) as port:
        async with browser(settings, ALLOW_LOOPBACK_MAIL_SERVERS=False) as (c, csrf):
            typed = {**FORM, "smtp_host": host, "smtp_port": str(port), "smtp_security": "none"}
            r = await c.post("/settings/email-sync/test", data={**typed, "csrf_token": csrf})
            assert r.status_code == 422
            assert LOOPBACK in r.text
            store_mailbox(database, host.strip("[]"), port, Security.NONE)
            await c.post("/settings/email-sync/test", data={"csrf_token": csrf})
    assert LOOPBACK in last_test_result(database)
    assert connections.attempts == []


@pytest.mark.parametrize("host", ["167772161", "0xa000001", "10.1", "::ffff:10.0.0.1"])
async def test_other_spellings_of_a_private_address_do_not_slip_past(
    host: str,
    client: httpx.AsyncClient,
    signed_in: str,
    database: Database,
    connections: ConnectionLog,
) -> None:
    store_mailbox(database, host, 25, Security.STARTTLS)
    await client.post("/settings/email-sync/test", data={"csrf_token": signed_in})
    assert "on a private network" in last_test_result(database)
    assert connections.attempts == []


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


@pytest.mark.parametrize(
    ("host", "allow_loopback", "words"),
    [
        ("10.1.2.3", True, PRIVATE),
        ("169.254.169.254", True, METADATA),
        ("127.0.0.1", False, LOOPBACK),
    ],
)
async def test_sending_through_a_mailbox_aimed_inside_connects_nowhere(
    host: str,
    allow_loopback: bool,
    words: str,
    settings: Settings,
    database: Database,
    connections: ConnectionLog,
) -> None:
    rt = Runtime.from_settings(
        settings.model_copy(update={"ALLOW_LOOPBACK_MAIL_SERVERS": allow_loopback})
    )
    try:
        with database.unit_of_work() as s:
            user = make_smtp_sender(s, port=25, host=host, security=Security.NONE)
            message_id = plan(s, rt, user).id
        assert await rt.make_outbox_worker().run_once() == 1
    finally:
        rt.database.dispose()
    with database.sessions() as s:
        copy = s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message_id)).one()
    # Refused by policy, not by the network: permanent, with the rule and nothing else.
    assert copy.status == CopyStatus.FAILED
    assert words in copy.smtp_reply
    assert connections.attempts == []


@pytest.mark.parametrize("host", ["10.1.2.3", "169.254.169.254", "fe80::1", "inside.attacker.test"])
async def test_imap_connection_test_cannot_scan_inside_either(
    host: str, hosts: HostTable, connections: ConnectionLog
) -> None:
    hosts.add("inside.attacker.test", "192.168.7.7")
    settings = ImapSettings(
        host, 993, Security.TLS, "u", "p", timeout=1, policy=mail_server_policy(Settings())
    )
    result = await asyncio.to_thread(test_imap_connection, settings)
    assert (result.ok, result.stage) == (False, Stage.CONNECT)
    assert "mailbeacon never connects" in result.message or "private" in result.message
    assert connections.attempts == []


@pytest.mark.parametrize("security", [Security.NONE, Security.TLS])
async def test_banner_grabbing_through_the_imap_test_reveals_nothing(
    security: Security, connections: ConnectionLog
) -> None:
    answers = []
    for banner in (SSH_BANNER, None):
        with fake_service(banner) as port:
            settings = ImapSettings(
                "127.0.0.1",
                port,
                security,
                "u",
                "p",
                timeout=1,
                policy=AddressPolicy(allow_loopback=True),
            )
            result = await asyncio.to_thread(test_imap_connection, settings)
        assert "SSH" not in result.message
        answers.append((result.stage, result.message.replace(f":{port}", ":PORT")))
    assert answers[0] == answers[1]
