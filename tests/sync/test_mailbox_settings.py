"""Settings > Email sync with IMAP, and ``GET``/``PUT /api/mailbox``: saved encrypted,
tested against a real Dovecot (folders listed, Sent found), passwords write-only and never
sent to a server they were not entered for."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.models import MailboxConnection
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in
from tests.factories.accounts import create_user
from tests.mail.conftest import SmtpPeer
from tests.sync.dovecot import Account, DovecotServer
from tests.sync.harness import smtp_sink, sync_runtime, sync_settings

__all__ = ["smtp_sink", "sync_runtime", "sync_settings"]

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def sally(sync_runtime: Runtime, database: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = MailbeaconApp(sync_runtime)
    async with make_client(app) as client:
        create_user(database)
        client.headers["x-csrf-token"] = await sign_in(client)
        yield client


def mailbox(database: Database) -> MailboxConnection:
    with database.sessions() as s:
        return s.scalars(select(MailboxConnection)).one()


def form(
    sink: SmtpPeer, server: DovecotServer, account: Account, **overrides: str
) -> dict[str, str]:
    values = {
        "imap_form": "1",
        "sender_name": "Sally Seller",
        "sender_address": "sally@example.com",
        "smtp_host": "127.0.0.1",
        "smtp_port": str(sink.port),
        "smtp_security": "none",
        "smtp_username": "",
        "smtp_password": "smtp secret",
        "imap_host": server.host,
        "imap_port": str(server.imap_port),
        "imap_security": "none",
        "imap_username": account.username,
        "imap_password": account.password,
        "sent_folder": "",
        "replace_provider_copies": "true",
    }
    values.update(overrides)
    return values


async def test_test_connection_signs_in_to_imap_lists_folders_and_finds_sent(
    sally: httpx.AsyncClient,
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    r = await sally.post("/settings/email-sync/test", data=form(smtp_sink, dovecot, account))
    assert r.status_code == 200, r.text
    assert "IMAP works." in r.text and "The Sent folder is “Sent”." in r.text
    # The folders to choose from, the one found first.
    assert '<select id="sent_folder" name="sent_folder"' in r.text
    for folder in ("INBOX", "Sent", "Drafts", "Trash", "Junk"):
        assert f'<option value="{folder}"' in r.text
    saved = mailbox(database)
    assert saved.sent_folder == "Sent"
    assert not saved.imap_same_password
    assert sync_runtime.credentials.open(saved.imap_password_encrypted) == account.password
    assert account.password.encode() not in saved.imap_password_encrypted.encode()


async def test_a_wrong_imap_password_is_reported_in_one_sentence(
    sally: httpx.AsyncClient, smtp_sink: SmtpPeer, dovecot: DovecotServer, account: Account
) -> None:
    r = await sally.post(
        "/settings/email-sync/test",
        data=form(smtp_sink, dovecot, account, imap_password="wrong one"),
    )
    assert r.status_code == 422
    assert (
        f"IMAP: sign-in refused.</strong> 127.0.0.1:{dovecot.imap_port} refused the user name "
        "or password." in r.text
    )


async def test_same_as_smtp_is_the_default_and_survives_only_with_the_smtp_password(
    sally: httpx.AsyncClient, database: Database, smtp_sink: SmtpPeer, dovecot: DovecotServer,
    account: Account,
) -> None:  # fmt: skip
    values = form(smtp_sink, dovecot, account, imap_password="", imap_same_password="true")
    r = await sally.post("/settings/email-sync", data=values)
    assert r.status_code == 303
    saved = mailbox(database)
    assert saved.imap_same_password and saved.imap_password_encrypted == ""
    # Pointing IMAP elsewhere without the SMTP password: the SMTP password must not
    # travel to a server it was never typed for.
    moved = dict(values, imap_host="imap.example.net", imap_security="tls", smtp_password="")
    r = await sally.post("/settings/email-sync", data=moved)
    assert r.status_code == 200
    assert "Enter the password again: the IMAP server changed." in r.text
    saved = mailbox(database)
    assert (saved.imap_host, saved.imap_same_password) == ("imap.example.net", False)
    assert saved.imap_password_encrypted == ""


async def test_the_json_api_reads_and_writes_the_connection_with_write_only_passwords(
    sally: httpx.AsyncClient,
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    assert (await sally.get("/api/mailbox")).status_code == 409
    body = {
        "sender_name": "Sally Seller",
        "sender_address": "sally@example.com",
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_sink.port,
        "smtp_security": "none",
        "smtp_username": "sally",
        "smtp_password": "smtp secret",
        "imap_host": dovecot.host,
        "imap_port": dovecot.imap_port,
        "imap_security": "none",
        "imap_username": account.username,
        "imap_password": account.password,
        "sent_folder": "Sent",
    }
    r = await sally.put("/api/mailbox", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "smtp_password" not in out and "imap_password" not in out
    assert out["has_smtp_password"] and out["has_imap_password"]
    assert out["imap_same_password"] is False  # an IMAP password was given
    assert (out["imap_host"], out["sent_folder"], out["replace_provider_copies"]) == (
        dovecot.host,
        "Sent",
        True,
    )
    assert out["sync"] is None and out["needs_password"] == []
    assert account.password not in r.text and "smtp secret" not in r.text
    got = (await sally.get("/api/mailbox")).json()
    assert got == {**out, "needs_password": []}

    # The IMAP server changes without its password: dropped, and said so.
    moved = {k: v for k, v in body.items() if not k.endswith("password")}
    moved["imap_host"] = "imap.example.net"
    moved["imap_security"] = "tls"
    moved["imap_same_password"] = False
    r = await sally.put("/api/mailbox", json=moved)
    assert r.status_code == 200
    assert r.json()["needs_password"] == ["imap_password"]
    assert r.json()["has_imap_password"] is False

    # Plain text to a remote server is refused, per field.
    r = await sally.put(
        "/api/mailbox", json={**body, "imap_host": "imap.example.net", "imap_security": "none"}
    )
    assert r.status_code == 422
    assert "imap_security" in r.json()["errors"]


async def test_use_demo_over_the_api_and_it_never_replaces_a_real_mailbox(
    sally: httpx.AsyncClient,
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    r = await sally.put("/api/mailbox", json={"use_demo": True})
    # The demo mailbox is off in these settings (DEMO_SMTP_PORT=0).
    assert r.status_code == 409 and "switched off" in r.json()["error"]
    sync_runtime.settings.DEMO_SMTP_PORT = 2626
    r = await sally.put("/api/mailbox", json={"use_demo": True})
    assert r.status_code == 200
    assert (r.json()["is_demo"], r.json()["smtp_port"], r.json()["imap_host"]) == (True, 2626, "")
    real = form(smtp_sink, dovecot, account)
    del real["imap_form"]
    r = await sally.put("/api/mailbox", json=real)
    assert r.status_code == 200 and r.json()["is_demo"] is False
    r = await sally.put("/api/mailbox", json={"use_demo": True})
    assert r.json()["is_demo"] is False and r.json()["imap_host"] == dovecot.host
