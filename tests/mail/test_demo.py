"""The demo mailbox: loopback SMTP that stores what it receives, and the demo connection."""

from __future__ import annotations

import email
import email.policy

import pytest
from sqlalchemy import select

from mailbeacon.accounts.service import account_service
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.netpolicy import mail_server_policy
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.mail.mailer import test_smtp_connection
from mailbeacon.models import CopyStatus, DemoMessage, MailboxConnection, RecipientCopy, Security
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender, make_user
from tests.factories.mail import plan

pytestmark = pytest.mark.asyncio


async def test_sending_through_the_demo_mailbox_lands_in_demo_messages(
    database: Database, runtime: Runtime
) -> None:
    demo = DemoSmtpServer(runtime.database, port=0)
    await demo.start()
    try:
        with database.unit_of_work() as s:
            user = make_user(s)
            mailbox = account_service.use_demo_mailbox(s, user, port=demo.port)
            assert (mailbox.is_demo, mailbox.smtp_host, mailbox.smtp_security) == (
                True,
                "127.0.0.1",
                Security.NONE,
            )
            message = plan(s, runtime, user, to=["ann@example.org"], bcc=["bob@example.org"])
            message_id = message.id
        assert await runtime.make_outbox_worker().run_once() == 2
        demo_policy = mail_server_policy(runtime.settings, demo=True)
        check = await test_smtp_connection(
            "127.0.0.1", demo.port, Security.NONE, "", "", policy=demo_policy
        )
        assert check.ok
    finally:
        await demo.stop()
    with database.sessions() as s:
        stored = s.scalars(select(DemoMessage).order_by(DemoMessage.recipient)).all()
        states = s.scalars(
            select(RecipientCopy.status).where(RecipientCopy.message_id == message_id)
        ).all()
    assert set(states) == {CopyStatus.SENT}
    assert [(d.mail_from, d.recipient) for d in stored] == [
        ("seller@example.com", "ann@example.org"),
        ("seller@example.com", "bob@example.org"),
    ]
    parsed = email.message_from_bytes(stored[0].raw, policy=email.policy.default)
    assert parsed["Subject"] == "Hello"
    assert "/t/o/" in parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]


async def test_the_demo_mailbox_sends_where_loopback_mail_servers_are_not_allowed(
    database: Database, mail_settings: Settings
) -> None:
    strict = Runtime.from_settings(
        mail_settings.model_copy(update={"ALLOW_LOOPBACK_MAIL_SERVERS": False})
    )
    demo = DemoSmtpServer(strict.database, port=0)
    await demo.start()
    try:
        with database.unit_of_work() as s:
            user = make_user(s)
            account_service.use_demo_mailbox(s, user, port=demo.port)
            demo_id = plan(s, strict, user, to=["ann@example.org"]).id
            # The same server saved as a mailbox of one's own is this machine's service.
            other = make_smtp_sender(s, port=demo.port, email="olga@example.com")
            other_id = plan(s, strict, other, to=["bob@example.org"]).id
        assert await strict.make_outbox_worker().run_once() == 2
    finally:
        await demo.stop()
        strict.database.dispose()
    with database.sessions() as s:
        copies = {
            c.message_id: c
            for c in s.scalars(
                select(RecipientCopy).where(RecipientCopy.message_id.in_([demo_id, other_id]))
            )
        }
    assert copies[demo_id].status == CopyStatus.SENT
    assert copies[other_id].status == CopyStatus.FAILED
    assert "(loopback); the operator has not allowed" in copies[other_id].smtp_reply


async def test_the_demo_mailbox_listens_on_loopback_only(runtime: Runtime) -> None:
    with pytest.raises(ValueError, match="loopback"):
        DemoSmtpServer(runtime.database, host="0.0.0.0", port=0)  # noqa: S104 (refused, never bound)


async def test_ensure_demo_mailbox_never_replaces_a_real_mailbox(database: Database) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=587, host="127.0.0.1", security=Security.STARTTLS)
        mailbox = account_service.use_demo_mailbox(s, user, port=2525)
        assert (mailbox.is_demo, mailbox.smtp_port) == (False, 587)
        other = make_user(s, email="olga@example.com")
        first = account_service.use_demo_mailbox(s, other, port=2525)
        again = account_service.use_demo_mailbox(s, other, port=2600)
        assert first.id == again.id and again.smtp_port == 2600
    with database.sessions() as s:
        assert len(s.scalars(select(MailboxConnection)).all()) == 2
