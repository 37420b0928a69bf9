"""What the product-level sync tests share: a runtime whose mailboxes may live on loopback,
a user whose mailbox is a real Dovecot account, a real SMTP sink, and mail to drop in.

Fixtures are imported by the test modules that use them (``from tests.sync.harness
import ...``); tests/sync/conftest.py provides ``dovecot`` and ``account``.
"""

from __future__ import annotations

import email
import email.policy
import secrets
from collections.abc import AsyncIterator, Iterator
from email.message import EmailMessage
from email.utils import format_datetime
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    CopyStatus,
    MailboxConnection,
    Message,
    Notification,
    ReceivedMail,
    RecipientCopy,
    Security,
    SyncState,
    User,
)
from mailbeacon.runtime import Runtime
from mailbeacon.sync.tasks import SyncWorker
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer, start_smtp, stop_smtp
from tests.sync.dovecot import Account, DovecotServer


@pytest.fixture
def sync_settings(settings: Settings) -> Settings:
    """Mail servers on loopback allowed (Dovecot and the sink live there), no waiting."""
    return settings.model_copy(
        update={
            "ALLOW_LOOPBACK_MAIL_SERVERS": True,
            "SEND_BACKOFF_SECONDS": 0.0,
            "SEND_TIMEOUT_SECONDS": 10.0,
            "DEMO_SMTP_PORT": 0,
            "SYNC_BACKOFF_SECONDS": 30.0,
            "SYNC_TIMEOUT_SECONDS": 10.0,
        }
    )


@pytest.fixture
def sync_runtime(sync_settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(sync_settings)
    yield rt
    rt.database.dispose()


@pytest_asyncio.fixture
async def smtp_sink() -> AsyncIterator[SmtpPeer]:
    peer = await start_smtp(SinkHandler())
    yield peer
    await stop_smtp(peer)


def worker(runtime: Runtime, **options: Any) -> SyncWorker:
    """A sync worker that looks often and waits in short IDLE slices (tests are quick)."""
    options.setdefault("poll_seconds", 0.05)
    options.setdefault("idle_slice_seconds", 0.2)
    return runtime.make_sync_worker(**options)


def make_imap_sender(
    database: Database,
    runtime: Runtime,
    server: DovecotServer,
    account: Account,
    *,
    smtp_port: int = 25,
    email_address: str | None = None,
    password: str | None = None,
    imap_port: int | None = None,
    replace_provider_copies: bool = True,
) -> int:
    """A user who sends through SMTP on loopback and whose mailbox is the Dovecot account."""
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=smtp_port, email=email_address or "sally@example.com")
        mailbox = s.scalars(
            select(MailboxConnection).where(MailboxConnection.user_id == user.id)
        ).one()
        mailbox.imap_host = server.host
        mailbox.imap_port = imap_port or server.imap_port
        mailbox.imap_security = Security.NONE
        mailbox.imap_username = account.username
        mailbox.imap_same_password = False
        mailbox.imap_password_encrypted = runtime.credentials.seal(
            account.password if password is None else password
        )
        mailbox.replace_provider_copies = replace_provider_copies
        return user.id


def send_planned(database: Database, runtime: Runtime, user_id: int, **fields: Any) -> int:
    """Plan a send as compose does (the outbox worker delivers it)."""
    with database.unit_of_work() as s:
        user = s.get_one(User, user_id)
        return plan(s, runtime, user, **fields).id


def mark_sent(database: Database, message_id: int, header: str | None = None) -> str:
    """Every copy delivered (no SMTP needed); optionally give the message a chosen
    Message-ID (to match a real sample's). Returns the Message-ID."""
    with database.unit_of_work() as s:
        message = s.get_one(Message, message_id)
        if header is not None:
            message.message_id_header = header
        message.sent_at = utcnow()
        for copy in s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message_id)):
            copy.status = CopyStatus.SENT
            copy.sent_at = message.sent_at
        return message.message_id_header


def reply_bytes(
    *,
    sender: str,
    to: str,
    subject: str,
    in_reply_to: str | None = None,
    references: str | None = None,
    text: str = "Sounds good, let us talk on Thursday.",
    quoted: str = "",
    html: str | None = None,
    message_id: str | None = None,
) -> bytes:
    """A person's reply as a mail client writes it."""
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = sender
    msg["To"] = to
    msg["Subject"] = subject
    msg["Date"] = format_datetime(utcnow())
    msg["Message-ID"] = message_id or f"<{secrets.token_hex(10)}@example.org>"
    if in_reply_to:
        msg["In-Reply-To"] = in_reply_to
    if references:
        msg["References"] = references
    body = text
    if quoted:
        body += "\n\nOn Monday, Sally wrote:\n" + "\n".join(f"> {q}" for q in quoted.splitlines())
    msg.set_content(body)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg.as_bytes()


def received(database: Database, message_id: int | None = None) -> list[ReceivedMail]:
    with database.sessions() as s:
        query = select(ReceivedMail).order_by(ReceivedMail.id)
        if message_id is not None:
            query = query.where(ReceivedMail.message_id == message_id)
        return list(s.scalars(query))


def copies(database: Database, message_id: int) -> dict[str, RecipientCopy]:
    with database.sessions() as s:
        return {
            c.address: c
            for c in s.scalars(
                select(RecipientCopy)
                .where(RecipientCopy.message_id == message_id)
                .order_by(RecipientCopy.id)
            )
        }


def notifications(database: Database, user_id: int) -> list[Notification]:
    with database.sessions() as s:
        return list(
            s.scalars(
                select(Notification)
                .where(Notification.user_id == user_id)
                .order_by(Notification.id)
            )
        )


def sync_state(database: Database) -> SyncState:
    with database.sessions() as s:
        return s.scalars(select(SyncState)).one()


def first_sync_done(database: Database) -> bool:
    with database.sessions() as s:
        return bool(s.scalar(select(SyncState.first_sync_done)))
