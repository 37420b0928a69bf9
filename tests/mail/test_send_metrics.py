"""Send outcomes in the metrics, as the outbox worker writes them (real aiosmtpd peer)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from mailbeacon.config import Settings
from mailbeacon.kit.metrics import render
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer
from tests.scrape import sample


def sends(outcome: str) -> float:
    return sample(render().decode(), "mailbeacon_sends_total", outcome=outcome) or 0.0


@pytest.fixture
def two_tries(mail_settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(mail_settings.model_copy(update={"SEND_MAX_ATTEMPTS": 2}))
    yield rt
    rt.database.dispose()


@pytest.mark.asyncio
async def test_each_written_outcome_is_counted(two_tries: Runtime, sink: SmtpPeer) -> None:
    handler: SinkHandler = sink.handler
    handler.refuse_rcpt["bob@example.org"] = "550 5.1.1 No such user"
    handler.refuse_rcpt["carl@example.org"] = "451 4.3.0 Try again later"
    database = two_tries.database
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=sink.port)
        plan(s, two_tries, user, to=["ann@example.org, bob@example.org, carl@example.org"])
    before = {o: sends(o) for o in ("sent", "failed", "retry", "unknown")}

    worker = two_tries.make_outbox_worker()
    await worker.run_once()

    assert worker.stats["sent"] == 1 and worker.stats["failed"] == 2
    # ann delivered; bob refused for good; carl refused for now, tried again at once
    # (no back-off in these settings) and given up after the second try.
    assert sends("sent") == before["sent"] + 1
    assert sends("failed") == before["failed"] + 2
    assert sends("retry") == before["retry"] + 1
    assert sends("unknown") == before["unknown"]
