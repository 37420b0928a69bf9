"""Settings > Email sync: the SMTP connection, its test, the demo mailbox, tracking options."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session
from sqlalchemy import select, text

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.models import ApiToken, MailboxConnection, Security, User
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in
from tests.factories.accounts import create_user
from tests.network import HostTable

pytestmark = pytest.mark.asyncio

FORM = {
    "sender_name": "Sally Seller",
    "sender_address": "sally@example.com",
    "smtp_host": "smtp.example.com",
    "smtp_port": "587",
    "smtp_security": "starttls",
    "smtp_username": "sally@example.com",
    "smtp_password": "app-password-1234",
}


@dataclass
class SmtpPeer:
    host: str
    port: int


class _Accept:
    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 OK"


@asynccontextmanager
async def smtp_server(**options: Any) -> AsyncIterator[SmtpPeer]:
    """aiosmtpd on loopback, on a port the kernel picks, on the test's own loop."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Accept(), hostname="peer.test", loop=loop, **options), "127.0.0.1", 0
    )
    try:
        yield SmtpPeer("127.0.0.1", server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), 5)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest_asyncio.fixture
async def signed_in(client: httpx.AsyncClient, database: Database) -> str:
    create_user(database)
    return await sign_in(client)


async def test_saving_stores_the_password_encrypted_and_never_shows_it(
    client: httpx.AsyncClient, signed_in: str, database: Database, app: MailbeaconApp
) -> None:
    r = await client.post("/settings/email-sync", data={**FORM, "csrf_token": signed_in})
    assert r.status_code == 303
    assert r.headers["location"] == "/settings/email-sync?notice=saved"
    with database.sessions() as s:
        row = s.execute(text("SELECT * FROM mailbox_connections")).mappings().one()
    assert "app-password-1234" not in " ".join(str(v) for v in row.values())
    assert app.runtime.credentials.open(row["smtp_password_encrypted"]) == "app-password-1234"
    assert (row["smtp_host"], row["smtp_port"], row["smtp_security"]) == (
        "smtp.example.com",
        587,
        "starttls",
    )
    page = await client.get(r.headers["location"])
    assert "Settings saved." in page.text
    assert 'value="smtp.example.com"' in page.text
    assert "app-password-1234" not in page.text
    assert "A password is stored (encrypted)" in page.text


async def test_bad_settings_come_back_with_messages_and_the_values_typed(
    client: httpx.AsyncClient, signed_in: str, database: Database
) -> None:
    bad = {**FORM, "smtp_host": "mail.example.org", "smtp_port": "99999", "smtp_security": "none"}
    r = await client.post("/settings/email-sync", data={**bad, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "Enter a port number between 1 and 65535" in r.text
    assert "loopback address only" in r.text
    assert 'value="mail.example.org"' in r.text
    assert 'value="99999"' in r.text
    assert "app-password-1234" not in r.text
    with database.sessions() as s:
        assert s.scalars(select(MailboxConnection)).first() is None


async def test_test_connection_to_a_closed_port_says_it_cannot_connect(
    client: httpx.AsyncClient, signed_in: str, database: Database
) -> None:
    port = closed_port()
    form = {**FORM, "smtp_host": "127.0.0.1", "smtp_port": str(port), "smtp_security": "none"}
    r = await client.post("/settings/email-sync/test", data={**form, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "Cannot connect." in r.text
    assert f"127.0.0.1:{port}" in r.text
    assert "nothing answered, or the connection was refused" in r.text
    with database.sessions() as s:
        mailbox = s.scalars(select(MailboxConnection)).one()
    # The settings were saved, and the outcome kept beside them.
    assert mailbox.smtp_port == port
    assert mailbox.last_test_result.startswith("Cannot connect.")


async def test_test_connection_tells_a_tls_failure_apart(
    client: httpx.AsyncClient, signed_in: str, sink: SmtpPeer
) -> None:
    # A plain SMTP server where implicit TLS was chosen: the handshake fails.
    form = {**FORM, "smtp_host": sink.host, "smtp_port": str(sink.port), "smtp_security": "tls"}
    r = await client.post("/settings/email-sync/test", data={**form, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "TLS failure." in r.text


def _refuse(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    return AuthResult(success=False, handled=False)


@pytest_asyncio.fixture
async def guarded() -> AsyncIterator[SmtpPeer]:
    """An SMTP server that refuses every password."""
    async with smtp_server(authenticator=_refuse, auth_require_tls=False) as peer:
        yield peer


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[SmtpPeer]:
    async with smtp_server() as peer:
        yield peer


async def test_test_connection_tells_a_refused_password_apart(
    client: httpx.AsyncClient, signed_in: str, guarded: SmtpPeer
) -> None:
    form = {
        **FORM,
        "smtp_host": guarded.host,
        "smtp_port": str(guarded.port),
        "smtp_security": "none",
    }
    r = await client.post("/settings/email-sync/test", data={**form, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "Authentication refused." in r.text
    assert "app-password-1234" not in r.text


async def test_a_working_connection_says_so(
    client: httpx.AsyncClient, signed_in: str, sink: SmtpPeer
) -> None:
    form = {
        **FORM,
        "smtp_host": sink.host,
        "smtp_port": str(sink.port),
        "smtp_security": "none",
        "smtp_username": "",
    }
    r = await client.post("/settings/email-sync/test", data={**form, "csrf_token": signed_in})
    assert r.status_code == 200
    assert "Connection works." in r.text


@asynccontextmanager
async def browser(
    settings: Settings, **changes: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, str]]:
    """A signed-in browser (the user must exist) on an app whose settings differ by ``changes``."""
    application = MailbeaconApp(Runtime.from_settings(settings.model_copy(update=changes)))
    try:
        async with make_client(application) as c:
            yield c, await sign_in(c)
    finally:
        application.runtime.database.dispose()


async def test_a_host_the_address_policy_refuses_is_a_field_error_and_nothing_is_saved(
    client: httpx.AsyncClient, signed_in: str, database: Database, hosts: HostTable
) -> None:
    hosts.add("intranet.corp.test", "10.20.30.40")
    for host, words in [
        ("10.1.2.3", "This address is on a private network"),
        ("intranet.corp.test", "This host name points to an address that is on a private"),
        ("169.254.169.254", "metadata service"),
    ]:
        form = {**FORM, "smtp_host": host, "smtp_security": "tls", "smtp_port": "465"}
        for path in ("/settings/email-sync", "/settings/email-sync/test"):
            r = await client.post(path, data={**form, "csrf_token": signed_in})
            assert r.status_code == 422
            assert words in r.text
            assert f'value="{host}"' in r.text
    with database.sessions() as s:
        assert s.scalars(select(MailboxConnection)).first() is None


async def test_with_default_settings_a_loopback_server_is_refused_for_a_real_mailbox(
    settings: Settings, signed_in: str, database: Database, sink: SmtpPeer
) -> None:
    form = {**FORM, "smtp_host": sink.host, "smtp_port": str(sink.port), "smtp_security": "none"}
    async with browser(settings, ALLOW_LOOPBACK_MAIL_SERVERS=False) as (c, csrf):
        r = await c.post("/settings/email-sync/test", data={**form, "csrf_token": csrf})
        assert r.status_code == 422
        assert (
            "This address is this machine itself (loopback); the operator has not allowed "
            "mail servers on this machine." in r.text
        )
        # A connection saved while loopback was allowed is refused when it is tried.
        async with browser(settings) as (allowed, allowed_csrf):
            r = await allowed.post(
                "/settings/email-sync", data={**form, "csrf_token": allowed_csrf}
            )
            assert r.status_code == 303
        r = await c.post("/settings/email-sync/test", data={"csrf_token": csrf})
        assert r.status_code == 422
        assert "Cannot connect." in r.text
    with database.sessions() as s:
        mailbox = s.scalars(select(MailboxConnection)).one()
    assert mailbox.last_test_result == (
        "Cannot connect. This address is this machine itself (loopback); the operator has "
        "not allowed mail servers on this machine."
    )


async def test_with_default_settings_the_demo_mailbox_passes_the_connection_test(
    settings: Settings, signed_in: str, database: Database
) -> None:
    demo = DemoSmtpServer(database, port=0)
    await demo.start()
    try:
        async with browser(
            settings, ALLOW_LOOPBACK_MAIL_SERVERS=False, DEMO_SMTP_PORT=demo.port
        ) as (c, csrf):
            r = await c.post("/settings/email-sync/demo", data={"csrf_token": csrf})
            assert r.status_code == 303
            r = await c.post("/settings/email-sync/test", data={"csrf_token": csrf})
    finally:
        await demo.stop()
    assert r.status_code == 200
    assert "Connection works." in r.text


async def test_test_connection_never_sends_the_stored_password_to_a_new_server(
    client: httpx.AsyncClient, signed_in: str, database: Database, app: MailbeaconApp
) -> None:
    tried: list[Any] = []

    def record(
        server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        tried.append(auth_data)
        return AuthResult(success=False, handled=False)

    r = await client.post("/settings/email-sync", data={**FORM, "csrf_token": signed_in})
    assert r.status_code == 303
    async with smtp_server(authenticator=record, auth_require_tls=False) as peer:
        # Someone with the session points the connection at their own server and
        # leaves the password field empty, as the form invites to.
        moved = {
            **FORM,
            "smtp_host": peer.host,
            "smtp_port": str(peer.port),
            "smtp_security": "none",
            "smtp_password": "",
        }
        r = await client.post("/settings/email-sync/test", data={**moved, "csrf_token": signed_in})
    assert r.status_code == 422
    assert "Enter the password again: the server changed." in r.text
    assert tried == []
    with database.sessions() as s:
        row = s.execute(text("SELECT * FROM mailbox_connections")).mappings().one()
    assert row["smtp_host"] == "127.0.0.1"
    assert row["smtp_password_encrypted"] == ""
    # Saving (rather than testing) a changed server says the same.
    r = await client.post("/settings/email-sync", data={**FORM, "csrf_token": signed_in})
    assert r.status_code == 303
    r = await client.post(
        "/settings/email-sync",
        data={
            **FORM,
            "smtp_host": "smtp.other.example",
            "smtp_password": "",
            "csrf_token": signed_in,
        },
    )
    assert r.status_code == 200
    assert "Enter the password again: the server changed." in r.text
    assert "A password is stored" not in r.text
    with database.sessions() as s:
        sealed = s.scalars(select(MailboxConnection.smtp_password_encrypted)).one()
    assert app.runtime.credentials.open(sealed) == ""


async def test_the_demo_mailbox_takes_one_click_and_unmarks_this_browser(
    client: httpx.AsyncClient, signed_in: str, database: Database, app: MailbeaconApp
) -> None:
    page = await client.get("/settings/email-sync")
    assert "Use the demo mailbox" in page.text
    r = await client.post("/settings/email-sync/demo", data={"csrf_token": signed_in})
    assert r.status_code == 303
    # This browser will read the demo inbox as the recipients: it must not count as the sender.
    cleared = [c for c in r.headers.get_list("set-cookie") if c.startswith("mb_viewer=")]
    assert cleared
    assert "max-age=0" in cleared[0].lower()
    assert "path=/t/" in cleared[0].lower()
    with database.sessions() as s:
        mailbox = s.scalars(select(MailboxConnection)).one()
    assert mailbox.is_demo
    assert mailbox.smtp_host == "127.0.0.1"
    assert mailbox.smtp_security == Security.NONE
    assert mailbox.smtp_port == app.runtime.settings.DEMO_SMTP_PORT
    page = await client.get("/settings/email-sync")
    assert "You send through the <strong>demo mailbox</strong>" in page.text
    assert "Use the demo mailbox" not in page.text


async def test_signing_in_with_the_demo_mailbox_does_not_mark_the_browser(
    client: httpx.AsyncClient, signed_in: str
) -> None:
    await client.post("/settings/email-sync/demo", data={"csrf_token": signed_in})
    await client.post("/sign-out", data={"csrf_token": signed_in})
    page = await client.get("/sign-in")
    token = page.text.split('name="csrf_token" value="', 1)[1].split('"', 1)[0]
    r = await client.post(
        "/sign-in",
        data={
            "email": "sally@example.com",
            "password": "a long enough password",
            "csrf_token": token,
        },
    )
    viewer = [c for c in r.headers.get_list("set-cookie") if c.startswith("mb_viewer=")]
    assert viewer
    assert "max-age=0" in viewer[0].lower()


async def test_tracking_options_are_saved_per_user(
    client: httpx.AsyncClient, signed_in: str, database: Database
) -> None:
    r = await client.post(
        "/settings/tracking", data={"csrf_token": signed_in, "link_tracking_enabled": "true"}
    )
    assert r.status_code == 303
    with database.sessions() as s:
        user = s.scalars(select(User)).one()
    assert (user.open_tracking_enabled, user.link_tracking_enabled, user.notify_tracking) == (
        False,
        True,
        False,
    )
    page = await client.get("/settings/email-sync")
    assert 'name="link_tracking_enabled" value="true" checked' in page.text
    assert 'name="open_tracking_enabled" value="true">' in page.text


async def test_api_tokens_are_minted_with_chosen_scopes_and_expiry_and_listed_so(
    client: httpx.AsyncClient, signed_in: str, database: Database
) -> None:
    page = await client.get("/settings/api-tokens")
    # Offered: read and send chosen, admin not; ninety days.
    assert re.search(r'name="scopes" value="read" checked', page.text)
    assert re.search(r'name="scopes" value="send" checked', page.text)
    assert re.search(r'name="scopes" value="admin">', page.text)
    assert '<option value="90" selected>' in page.text
    r = await client.post(
        "/settings/api-tokens",
        data={
            "csrf_token": signed_in,
            "name": "Reports",
            "scopes": ["read"],
            "expires_in_days": "30",
        },
    )
    assert r.status_code == 200
    assert 'id="new-token">mb_' in r.text
    r = await client.post(
        "/settings/api-tokens",
        data={
            "csrf_token": signed_in,
            "name": "Forever",
            "scopes": ["read", "admin"],
            "expires_in_days": "",
        },
    )
    assert r.status_code == 200
    listing = (await client.get("/settings/api-tokens")).text
    rows = dict(
        re.findall(
            r"<td>(Reports|Forever)</td>.*?<td class=\"token-scopes\">([^<]*)</td>", listing, re.S
        )
    )
    assert rows == {"Reports": "read", "Forever": "read, admin"}
    expiries = re.findall(r'<td class="token-expiry">(?:<time [^>]*>)?([^<]*)<', listing)
    with database.sessions() as s:
        reports = s.scalars(select(ApiToken).where(ApiToken.name == "Reports")).one()
        assert reports.expires_at is not None
        assert reports.expires_at.date() == (utcnow() + timedelta(days=30)).date()
    day = reports.expires_at
    assert sorted(expiries) == sorted([f"{day.day} {day:%b} {day.year}", "never"])


async def test_a_token_without_scopes_or_with_a_bad_expiry_is_refused(
    client: httpx.AsyncClient, signed_in: str, database: Database
) -> None:
    r = await client.post(
        "/settings/api-tokens",
        data={"csrf_token": signed_in, "name": "CRM", "expires_in_days": "soon"},
    )
    assert r.status_code == 422
    assert "Choose how many days the token works." in r.text
    # Every box unticked, as the page's form sends it.
    r = await client.post(
        "/settings/api-tokens",
        data={"csrf_token": signed_in, "name": "CRM", "scopes_offered": "true"},
    )
    assert r.status_code == 422
    assert "Choose at least one thing the token may do." in r.text
    assert 'value="CRM"' in r.text
    with database.sessions() as s:
        assert s.scalars(select(ApiToken)).first() is None
    # A post that never offered the choice (a script of an earlier version) gets what
    # tokens could do before scopes, less Settings.
    r = await client.post("/settings/api-tokens", data={"csrf_token": signed_in, "name": "CRM"})
    assert r.status_code == 200
    with database.sessions() as s:
        assert s.scalars(select(ApiToken)).one().scopes == "read send"
