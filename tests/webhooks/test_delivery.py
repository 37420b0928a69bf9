"""Events reach a real receiver on loopback, signed so that the Standard Webhooks library
verifies them: only a person's opens and clicks, retried until the receiver is back,
delivered once, in order per email; a gone or failing receiver is disabled and its owner
told. Every test runs on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    DeliveryStatus,
    Notification,
    NotificationKind,
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
)
from mailbeacon.runtime import Runtime
from mailbeacon.webhooks import repository
from mailbeacon.webhooks.schemas import EndpointPatch
from mailbeacon.webhooks.service import webhook_service
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import SCANNER, hit
from tests.factories.mail import send_mail
from tests.webhooks.conftest import add_endpoint, count, make_due
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.asyncio


def deliveries(runtime: Runtime, endpoint_id: int) -> list[WebhookDelivery]:
    with runtime.database.unit_of_work(immediate=False) as s:
        return list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == endpoint_id)
                .order_by(WebhookDelivery.id)
            )
        )


def endpoint(runtime: Runtime, endpoint_id: int) -> WebhookEndpoint:
    with runtime.database.unit_of_work(immediate=False) as s:
        found = s.get(WebhookEndpoint, endpoint_id)
        assert found is not None
        return found


async def test_a_persons_first_open_arrives_signed_and_verifies_with_the_library(
    runtime: Runtime,
) -> None:
    uid = make_demo_sender(runtime.database)
    sent = send_mail(runtime.database, runtime, uid)
    copy_id = sent.copies["ann@example.org"]
    async with receiver() as r:
        _, secret = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        now = time.time()
        runtime.write_batch([hit(copy_id, at=now - 120), hit(copy_id, at=now - 30)], replay=False)
        worker = runtime.make_webhook_worker()
        assert await worker.run_once() == 1
    [request] = r.app.requests
    assert request.path == "/hooks/mailbeacon"
    assert request.headers["content-type"] == "application/json"
    event = request.verified(secret)
    assert event["type"] == "copy.opened"
    data = event["data"]
    assert data["first"] is True and data["label"] == "human" and data["reason"]
    assert data["copy"] == {"id": copy_id, "recipient": "ann@example.org", "kind": "to"}
    assert data["message"]["id"] == sent.message_id and data["message"]["subject"] == "Our offer"
    assert data["user"] == {"id": uid, "email": "sally@example.com"}
    assert request.headers["webhook-id"].startswith("msg_")


async def test_machine_and_self_hits_never_become_opens_or_clicks(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    sent = send_mail(runtime.database, runtime, uid)
    copy_id = sent.copies["ann@example.org"]
    async with receiver() as r:
        _, secret = add_endpoint(
            runtime, uid, r.url, ["copy.opened", "link.clicked"], every_open=True
        )
        now = time.time()
        runtime.write_batch(
            [
                hit(copy_id, at=now - 300, ua=SCANNER),
                hit(copy_id, "click", at=now - 290, ua=SCANNER, position=0),
                hit(copy_id, at=now - 200, viewer=uid),
                hit(copy_id, "click", at=now - 190, viewer=uid, position=0),
            ],
            replay=False,
        )
        assert count(runtime.database, "webhook_events") == 0
        runtime.write_batch(
            [hit(copy_id, at=now - 100), hit(copy_id, "click", at=now - 50, position=1)],
            replay=False,
        )
        await runtime.make_webhook_worker().run_once()
    events = [q.verified(secret) for q in r.app.requests]
    assert [e["type"] for e in events] == ["copy.opened", "link.clicked"]
    assert all(e["data"]["label"] == "human" for e in events)
    assert events[1]["data"]["link"]["url"] == "https://example.com/pricing"


async def test_every_open_is_posted_only_to_endpoints_that_ask_for_it(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as first_only, receiver() as every:
        add_endpoint(runtime, uid, first_only.url, ["copy.opened"])
        _, secret = add_endpoint(runtime, uid, every.url, ["copy.opened"], every_open=True)
        now = time.time()
        runtime.write_batch([hit(copy_id, at=now - 600)], replay=False)
        runtime.write_batch([hit(copy_id, at=now - 300), hit(copy_id, at=now - 60)], replay=False)
        await runtime.make_webhook_worker().run_once()
    assert len(first_only.app.requests) == 1
    firsts = [q.verified(secret)["data"]["first"] for q in every.app.requests]
    assert firsts == [True, False, False]


async def test_a_receiver_that_is_down_gets_the_event_exactly_once_when_it_is_back(
    patient: Runtime,
) -> None:
    runtime = patient
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver(started=False) as r:
        endpoint_id, secret = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        worker = runtime.make_webhook_worker()
        assert await worker.run_once() == 1  # refused: nobody listens
        [down] = deliveries(runtime, endpoint_id)
        assert down.status == DeliveryStatus.PENDING and down.attempts == 1
        assert down.response_status is None and "Could not connect" in down.last_error
        assert down.last_attempt_at is not None and down.next_attempt_at is not None
        assert down.next_attempt_at - down.last_attempt_at >= timedelta(seconds=50)
        assert await worker.run_once() == 0  # not due yet: backing off
        make_due(runtime, endpoint_id)
        assert await worker.run_once() == 1  # still down
        await r.up()
        make_due(runtime, endpoint_id)
        assert await worker.run_once() == 1
        make_due(runtime, endpoint_id)
        assert await worker.run_once() == 0  # delivered: nothing left to post
    [request] = r.app.requests
    assert request.verified(secret)["type"] == "copy.opened"
    [done] = deliveries(runtime, endpoint_id)
    assert done.status == DeliveryStatus.DELIVERED and done.attempts == 3
    assert done.response_status == 204 and done.last_error == ""
    assert endpoint(runtime, endpoint_id).failing_since is None


async def test_every_retry_carries_the_same_webhook_id_and_a_fresh_signature(
    patient: Runtime,
) -> None:
    runtime = patient
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        r.app.answers = [500, 503]
        endpoint_id, secret = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        worker = runtime.make_webhook_worker()
        for _ in range(3):
            await worker.run_once()
            make_due(runtime, endpoint_id)
    assert len(r.app.requests) == 3
    assert len(set(r.app.ids())) == 1
    for request in r.app.requests:
        assert request.verified(secret)["type"] == "copy.opened"


async def test_an_emails_events_arrive_in_order_even_when_the_first_must_be_retried(
    patient: Runtime,
) -> None:
    runtime = patient
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        r.app.answers = [500]
        endpoint_id, secret = add_endpoint(runtime, uid, r.url, ["copy.opened", "link.clicked"])
        now = time.time()
        runtime.write_batch(
            [hit(copy_id, at=now - 60), hit(copy_id, "click", at=now - 30, position=0)],
            replay=False,
        )
        worker = runtime.make_webhook_worker()
        # The click is due at once too, but waits while the open before it is retried.
        assert await worker.run_once() == 1
        assert [q.verified(secret)["type"] for q in r.app.requests] == ["copy.opened"]
        make_due(runtime, endpoint_id)
        assert await worker.run_once() == 2
    types = [q.verified(secret)["type"] for q in r.app.requests]
    assert types == ["copy.opened", "copy.opened", "link.clicked"]
    assert r.app.ids()[0] == r.app.ids()[1] != r.app.ids()[2]


async def test_a_receiver_answering_410_is_disabled_and_its_owner_told(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        r.app.default = 410
        endpoint_id, _ = add_endpoint(runtime, uid, r.url, ["copy.opened", "link.clicked"])
        now = time.time()
        runtime.write_batch(
            [hit(copy_id, at=now - 60), hit(copy_id, "click", at=now - 30, position=0)],
            replay=False,
        )
        await runtime.make_webhook_worker().run_once()
        runtime.write_batch([hit(copy_id, "click", at=now - 10, position=1)], replay=False)
        await runtime.make_webhook_worker().run_once()
    assert len(r.app.requests) == 1  # nothing after the 410
    gone = endpoint(runtime, endpoint_id)
    assert not gone.enabled and "410" in gone.disabled_reason
    assert [d.status for d in deliveries(runtime, endpoint_id)] == [
        DeliveryStatus.FAILED,
        DeliveryStatus.FAILED,
    ]
    with runtime.database.unit_of_work(immediate=False) as s:
        [note] = s.scalars(
            select(Notification).where(
                Notification.user_id == uid, Notification.kind == NotificationKind.WEBHOOK_DISABLED
            )
        )
        assert note.message_id is None and note.read_at is None
        assert r.url in note.title and "410" in note.title


async def test_a_receiver_failing_for_a_day_is_disabled(patient: Runtime) -> None:
    runtime = patient
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        r.app.default = 500
        endpoint_id, _ = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        worker = runtime.make_webhook_worker()
        await worker.run_once()
        assert endpoint(runtime, endpoint_id).enabled  # failing, for a moment only
        with runtime.database.unit_of_work() as s:
            s.execute(
                update(WebhookEndpoint)
                .where(WebhookEndpoint.id == endpoint_id)
                .values(failing_since=utcnow() - timedelta(hours=24, minutes=1))
            )
        make_due(runtime, endpoint_id)
        await worker.run_once()
    disabled = endpoint(runtime, endpoint_id)
    assert not disabled.enabled and "for a day" in disabled.disabled_reason
    with runtime.database.unit_of_work(immediate=False) as s:
        notes = list(
            s.scalars(
                select(Notification.title).where(
                    Notification.user_id == uid,
                    Notification.kind == NotificationKind.WEBHOOK_DISABLED,
                )
            )
        )
        assert len(notes) == 1 and "failed for a day" in notes[0]
    # Enabling it again starts afresh.
    with runtime.database.unit_of_work() as s:
        user = s.get(User, uid)
        assert user is not None
        webhook_service.update_endpoint(
            s, user, endpoint_id, EndpointPatch(enabled=True), settings=runtime.settings
        )
    again = endpoint(runtime, endpoint_id)
    assert again.enabled and again.failing_since is None and again.disabled_reason == ""


class FailingObserver:
    """An observer after webhooks' whose write fails: the whole batch rolls back."""

    def on_events_stored(self, session: object, events: object) -> None:
        raise RuntimeError("the disk is full")


async def test_a_rolled_back_batch_of_hits_posts_nothing(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.pipeline.observers.append(FailingObserver())
        with pytest.raises(RuntimeError):
            runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        assert count(runtime.database, "webhook_events") == 0
        assert count(runtime.database, "webhook_deliveries") == 0
        assert await runtime.make_webhook_worker().run_once() == 0
    assert r.app.requests == []


async def test_two_workers_draining_at_once_post_each_event_once(runtime: Runtime) -> None:
    uid = make_demo_sender(runtime.database)
    recipients = tuple(f"r{n}@example.org" for n in range(12))
    sent = send_mail(runtime.database, runtime, uid, recipients)
    async with receiver() as r:
        _, secret = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        now = time.time()
        runtime.write_batch(
            [hit(copy_id, at=now - 60) for copy_id in sent.copies.values()], replay=False
        )
        first = runtime.make_webhook_worker(worker_id="one", concurrency=3)
        second = runtime.make_webhook_worker(worker_id="two", concurrency=3)
        handled = await asyncio.gather(first.run_once(), second.run_once())
    assert sum(handled) == 12
    assert len(r.app.requests) == 12 and len(set(r.app.ids())) == 12
    recipients_told = {q.verified(secret)["data"]["copy"]["recipient"] for q in r.app.requests}
    assert recipients_told == set(recipients)


async def test_the_delivery_log_forgets_finished_deliveries_after_its_keeping_period(
    runtime: Runtime,
) -> None:
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        endpoint_id, _ = add_endpoint(runtime, uid, r.url, ["copy.opened"], every_open=True)
        now = time.time()
        runtime.write_batch([hit(copy_id, at=now - 600)], replay=False)
        await runtime.make_webhook_worker().run_once()
        r.app.default = 500
        runtime.write_batch([hit(copy_id, at=now - 60)], replay=False)
        await runtime.make_webhook_worker().run_once()
    old = utcnow() - timedelta(days=runtime.settings.WEBHOOK_LOG_DAYS, hours=1)
    with runtime.database.unit_of_work() as s:
        s.execute(update(WebhookDelivery).values(created_at=old))
        s.execute(update(WebhookEvent).values(created_at=old))
    with runtime.database.unit_of_work() as s:
        assert repository.purge_log(s.connection(), utcnow() - timedelta(days=30)) == 1
    # The delivery still being retried stays, with its event.
    [left] = deliveries(runtime, endpoint_id)
    assert left.status == DeliveryStatus.PENDING
    assert count(runtime.database, "webhook_events") == 1


async def test_a_delivery_left_mid_request_by_a_dead_worker_is_posted_again(
    runtime: Runtime,
) -> None:
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    async with receiver() as r:
        endpoint_id, secret = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.write_batch([hit(copy_id, at=time.time() - 60)], replay=False)
        # A worker claimed it ten minutes ago and never came back.
        with runtime.database.unit_of_work() as s:
            [claimed] = repository.claim(s.connection(), "dead", utcnow(), 5)
            s.execute(update(WebhookDelivery).values(claimed_at=utcnow() - timedelta(minutes=10)))
        worker = runtime.make_webhook_worker()
        assert await worker.run_once() == 1
    [request] = r.app.requests
    assert request.headers["webhook-id"] == claimed.webhook_id
    assert request.verified(secret)["type"] == "copy.opened"
    [done] = deliveries(runtime, endpoint_id)
    assert done.status == DeliveryStatus.DELIVERED and done.attempts == 2
