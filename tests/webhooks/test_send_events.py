"""message.sent and copy.failed come from the transaction that closes a send request: a
rolled-back closing tells nothing, and the sweep that closes it later tells it once."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import pytest
import pytest_asyncio
from sqlalchemy import Connection, select
from sqlalchemy.exc import OperationalError

from mailbeacon.mail.events import MessageSettled
from mailbeacon.models import OutboxEntry
from mailbeacon.runtime import Runtime
from mailbeacon.webhooks.observers import SendWebhooks
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer, start_smtp, stop_smtp
from tests.webhooks.conftest import add_endpoint, count
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[SmtpPeer]:
    peer = await start_smtp(SinkHandler(refuse_rcpt={"bob@example.org": "550 5.1.1 No such user"}))
    yield peer
    await stop_smtp(peer)


def plan_send(runtime: Runtime, port: int) -> tuple[int, int]:
    with runtime.database.unit_of_work() as s:
        user = make_smtp_sender(s, port=port)
        message = plan(s, runtime, user, to=["ann@example.org, bob@example.org"])
        return user.id, message.id


class FailingClose:
    """An observer after webhooks' whose write fails: the closing transaction rolls back."""

    def on_messages_settled(self, conn: Connection, settled: Sequence[MessageSettled]) -> None:
        raise OperationalError("INSERT INTO elsewhere", None, Exception("disk full"))


def request_open(runtime: Runtime, message_id: int) -> bool:
    with runtime.database.unit_of_work(immediate=False) as s:
        entry = s.scalars(select(OutboxEntry).where(OutboxEntry.message_id == message_id)).one()
        return entry.completed_at is None


async def test_a_settled_send_posts_message_sent_and_copy_failed(
    runtime: Runtime, sink: SmtpPeer
) -> None:
    user_id, message_id = plan_send(runtime, sink.port)
    async with receiver() as r:
        _, secret = add_endpoint(runtime, user_id, r.url, ["message.sent", "copy.failed"])
        assert await runtime.make_outbox_worker().run_once() == 2
        await runtime.make_webhook_worker().run_once()
    events = [q.verified(secret) for q in r.app.requests]
    assert [e["type"] for e in events] == ["message.sent", "copy.failed"]
    sent, failed = events[0]["data"], events[1]["data"]
    assert sent["message"]["id"] == message_id
    assert {c["recipient"]: c["status"] for c in sent["copies"]} == {
        "ann@example.org": "sent",
        "bob@example.org": "failed",
    }
    assert failed["copy"]["recipient"] == "bob@example.org"
    assert failed["smtp_reply"].startswith("550")


async def test_a_rolled_back_closing_posts_nothing_and_the_sweep_posts_it_once(
    runtime: Runtime, sink: SmtpPeer
) -> None:
    user_id, message_id = plan_send(runtime, sink.port)
    async with receiver() as r:
        _, secret = add_endpoint(runtime, user_id, r.url, ["message.sent", "copy.failed"])
        failing = runtime.make_outbox_worker(delivery_observers=[SendWebhooks(), FailingClose()])
        await failing.run_once()
        # The copies went out, but the transaction closing the request rolled back: so
        # did the events written in it.
        assert request_open(runtime, message_id)
        assert count(runtime.database, "webhook_events") == 0
        assert await runtime.make_webhook_worker().run_once() == 0
        # The next sweep closes the request, and tells it, once.
        sweeper = runtime.make_outbox_worker()
        await sweeper.run_once()
        await sweeper.run_once()
        assert not request_open(runtime, message_id)
        await runtime.make_webhook_worker().run_once()
    types = [q.verified(secret)["type"] for q in r.app.requests]
    assert types == ["message.sent", "copy.failed"]
    assert count(runtime.database, "webhook_events") == 2
