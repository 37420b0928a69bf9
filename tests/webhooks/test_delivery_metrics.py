"""Webhook delivery outcomes in the metrics, as the worker writes them (real receiver)."""

from __future__ import annotations

import time

import pytest

from mailbeacon.kit.metrics import render
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import hit
from tests.factories.mail import send_mail
from tests.scrape import sample
from tests.webhooks.conftest import add_endpoint, make_due
from tests.webhooks.receiver import receiver


def deliveries(outcome: str) -> float:
    return sample(render().decode(), "mailbeacon_webhook_deliveries_total", outcome=outcome) or 0.0


@pytest.mark.asyncio
async def test_a_failed_then_delivered_post_counts_a_retry_and_a_delivery(
    patient: Runtime,
) -> None:
    runtime = patient
    uid = make_demo_sender(runtime.database)
    copy_id = send_mail(runtime.database, runtime, uid).copies["ann@example.org"]
    before = {o: deliveries(o) for o in ("delivered", "retry", "failed")}
    async with receiver() as r:
        r.app.answers = [500]
        endpoint_id, _ = add_endpoint(runtime, uid, r.url, ["copy.opened"])
        runtime.pipeline.process([hit(copy_id, at=time.time() - 60)])
        worker = runtime.make_webhook_worker()
        await worker.run_once()  # 500: tried again later
        assert deliveries("retry") == before["retry"] + 1
        make_due(runtime, endpoint_id)
        await worker.run_once()
    assert len(r.app.requests) == 2
    assert deliveries("delivered") == before["delivered"] + 1
    assert deliveries("failed") == before["failed"]
