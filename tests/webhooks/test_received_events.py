"""reply.received, auto_reply.received and copy.bounced come from the transaction that
stores the incoming mail (mailbox sync's observers), through the runtime's wiring."""

from __future__ import annotations

import pytest

from mailbeacon.kit.clock import utcnow
from mailbeacon.models import ReceivedKind, ReceivedMail
from mailbeacon.runtime import Runtime
from mailbeacon.sync.events import ReceivedStored
from tests.factories.accounts import make_demo_sender
from tests.factories.mail import send_mail
from tests.webhooks.conftest import add_endpoint, count
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.asyncio


def store(runtime: Runtime, user_id: int, message_id: int, copy_id: int | None) -> None:
    """Three pieces of mail stored in one transaction, handed to the runtime's observers."""
    now = utcnow()
    with runtime.database.unit_of_work() as s:
        stored = []
        for n, (kind, sender) in enumerate(
            [
                (ReceivedKind.REPLY, "ann@example.org"),
                (ReceivedKind.AUTO_REPLY, "ann@example.org"),
                (ReceivedKind.BOUNCE, "mailer-daemon@example.org"),
            ]
        ):
            row = ReceivedMail(
                user_id=user_id,
                message_id=message_id,
                copy_id=copy_id,
                kind=kind,
                dedupe_key=f"<{n}@example.org>",
                from_address=sender,
                from_name="Ann" if kind != ReceivedKind.BOUNCE else "",
                received_at=now,
                bounce_status="5.1.1" if kind == ReceivedKind.BOUNCE else "",
                bounce_diagnostic="550 5.1.1 user unknown" if kind == ReceivedKind.BOUNCE else "",
            )
            s.add(row)
            s.flush()
            stored.append(
                ReceivedStored(
                    received_id=row.id,
                    kind=kind,
                    user_id=user_id,
                    message_id=message_id,
                    copy_id=copy_id,
                    from_address=row.from_address,
                    from_name=row.from_name,
                    subject="Our offer",
                    received_at=now,
                )
            )
        for observer in runtime.receiver.observers:
            observer.on_received(s, stored)


async def test_replies_automatic_replies_and_bounces_are_posted(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    sent = send_mail(runtime.database, runtime, uid)
    copy_id = sent.copies["ann@example.org"]
    async with receiver() as r:
        _, secret = add_endpoint(
            runtime, uid, r.url, ["reply.received", "auto_reply.received", "copy.bounced"]
        )
        store(runtime, uid, sent.message_id, copy_id)
        await runtime.make_webhook_worker().run_once()
    events = [q.verified(secret) for q in r.app.requests]
    assert [e["type"] for e in events] == [
        "reply.received",
        "auto_reply.received",
        "copy.bounced",
    ]
    assert events[0]["data"]["from"] == {"address": "ann@example.org", "name": "Ann"}
    assert events[0]["data"]["copy"]["recipient"] == "ann@example.org"
    assert events[2]["data"]["bounce"] == {
        "status": "5.1.1",
        "diagnostic": "550 5.1.1 user unknown",
    }


async def test_a_reply_nobody_subscribed_to_writes_nothing(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    sent = send_mail(runtime.database, runtime, uid)
    add_endpoint(runtime, uid, "https://crm.example.com/hooks", ["copy.opened"])
    store(runtime, uid, sent.message_id, sent.copies["ann@example.org"])
    assert count(runtime.database, "webhook_events") == 0
