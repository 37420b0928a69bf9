"""A real Dovecot on loopback for the whole run, and a fresh user per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailbeacon.kit.netpolicy import AddressPolicy
from mailbeacon.models.mailbox import Security
from mailbeacon.sync.imap import ImapMailbox, ImapSettings, open_mailbox
from tests.sync.dovecot import Account, DovecotServer, dovecot_missing_reason, start_dovecot

LOOPBACK_ALLOWED = AddressPolicy(allow_loopback=True)


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One Dovecot for the run, in its own folder under /tmp (its mail processes must reach it)."""
    reason = dovecot_missing_reason()
    if reason is not None:
        # In CI a missing server is a failure (.ci/run installs it), never a silent skip.
        if os.environ.get("CI"):
            pytest.fail(f"Dovecot is required in CI: {reason}")
        pytest.skip(f"Dovecot is not installed: {reason}")
    root = Path(tempfile.mkdtemp(prefix="mailbeacon-dovecot-"))
    server = start_dovecot(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def account(dovecot: DovecotServer) -> Account:
    """A user of its own, with INBOX, Sent (\\Sent), Drafts, Trash and Junk."""
    return dovecot.add_user()


def settings_for(
    server: DovecotServer,
    account: Account,
    security: Security = Security.NONE,
    *,
    password: str | None = None,
    timeout: float = 10.0,
) -> ImapSettings:
    port = server.imaps_port if security == Security.TLS else server.imap_port
    return ImapSettings(
        host=server.host,
        port=port,
        security=security,
        username=account.username,
        password=account.password if password is None else password,
        timeout=timeout,
        ssl_context=None if security == Security.NONE else server.ssl_context(),
        # Dovecot listens on loopback, which the default policy refuses.
        policy=LOOPBACK_ALLOWED,
    )


@pytest.fixture
def mailbox(dovecot: DovecotServer, account: Account) -> Iterator[ImapMailbox]:
    """The test user's mailbox, signed in over plain IMAP on loopback."""
    client = open_mailbox(settings_for(dovecot, account))
    yield client
    client.close()
