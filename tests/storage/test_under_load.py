"""The whole server under concurrent load, on SQLite (one writer at a time) and PostgreSQL.

Before units of work took SQLite's write lock up front, a pixel hammered ten times
a second made API sends fail with "database is locked", a 1,000-recipient
delivery made every other send fail, and a second "Send again" answered 500.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.config import Settings
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    CopyStatus,
    DemoMessage,
    Message,
    OutboxEntry,
    RecipientCopy,
    TrackingEvent,
)
from mailbeacon.runtime import Runtime
from tests.factories.accounts import PASSWORD
from tests.factories.hits import CHROME
from tests.factories.mail import plan
from tests.server import free_port, server_env, serving

pytestmark = [pytest.mark.asyncio, pytest.mark.slow]

HITS_PER_SECOND = 50
SECONDS = 10
SMALL_SENDS = 30
BIG_RECIPIENTS = 1000
BODY = '<p>Hello, see <a href="https://example.com/offer">our offer</a>.</p>'


def _prepare(runtime: Runtime, demo_port: int) -> tuple[str, list[int], tuple[int, int]]:
    """A sender with an API token, a tracked email to hit, and a copy whose delivery is
    unknown (to send again)."""
    with runtime.database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email="sally@example.com", password=PASSWORD, organisation="Acme")
        )
        account_service.use_demo_mailbox(s, user, port=demo_port)
        _, token = account_service.create_api_token(s, user, "load")
        tracked = plan(s, runtime, user, to=[f"t{i}@example.org" for i in range(5)])
        tracked_copies = list(
            s.scalars(select(RecipientCopy.id).where(RecipientCopy.message_id == tracked.id))
        )
        doubtful = plan(s, runtime, user, to=["doubt@example.org"], subject="Doubt")
        copy = s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == doubtful.id)).one()
        copy.status = CopyStatus.UNKNOWN
        copy.attempts = 1
        s.scalars(
            select(OutboxEntry).where(OutboxEntry.message_id == doubtful.id)
        ).one().completed_at = utcnow()
        return token, tracked_copies, (doubtful.id, copy.id)


async def _wait_until_delivered(runtime: Runtime) -> None:
    deadline = time.monotonic() + 180
    while True:
        with runtime.database.unit_of_work(immediate=False) as s:
            pending = s.scalar(
                select(func.count())
                .select_from(RecipientCopy)
                .where(RecipientCopy.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]))
            )
        if not pending:
            return
        assert time.monotonic() < deadline, f"{pending} copies still not delivered"
        await asyncio.sleep(0.5)


async def test_hits_sends_resends_and_a_big_delivery_at_once_never_fail(
    tmp_path: Path, db_url: str
) -> None:
    port, demo_port = free_port(), free_port()
    settings = Settings(
        DATA_DIR=tmp_path / "data", DATABASE_URL=db_url, BASE_URL=f"http://127.0.0.1:{port}"
    )
    runtime = Runtime.from_settings(settings)
    token, tracked_copies, (doubt_message, doubt_copy) = _prepare(runtime, demo_port)
    pixels = [f"/t/o/{runtime.codec.mint_open_token(c)}.gif" for c in tracked_copies]
    env = server_env(settings.DATA_DIR, db_url, port, DEMO_SMTP_PORT=str(demo_port))
    statuses: Counter[tuple[str, int]] = Counter()

    with serving(env, port):
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=120, limits=limits
        ) as client:
            auth = {"authorization": f"Bearer {token}"}

            async def hit(path: str) -> None:
                r = await client.get(path, headers={"user-agent": CHROME})
                statuses[("pixel", r.status_code)] += 1

            async def hits() -> None:
                tasks = []
                for i in range(HITS_PER_SECOND * SECONDS):
                    tasks.append(asyncio.create_task(hit(pixels[i % len(pixels)])))
                    await asyncio.sleep(1 / HITS_PER_SECOND)
                await asyncio.gather(*tasks)

            async def send(subject: str, to: list[str]) -> None:
                r = await client.post(
                    "/api/messages",
                    headers=auth,
                    json={"to": to, "subject": subject, "body_html": BODY},
                )
                statuses[("send", r.status_code)] += 1

            async def send_again() -> None:
                r = await client.post(
                    f"/api/mail/{doubt_message}/copies/{doubt_copy}/retry", headers=auth
                )
                statuses[("retry", r.status_code)] += 1

            async def sends() -> None:
                await asyncio.sleep(1)
                big = asyncio.create_task(
                    send("Big", [f"r{i}@example.org" for i in range(BIG_RECIPIENTS)])
                )
                await asyncio.sleep(0.5)  # its delivery is under way while the rest arrive
                await asyncio.gather(
                    big,
                    *(
                        send(f"Small {i}", [f"s{i}@example.org", f"c{i}@example.org"])
                        for i in range(SMALL_SENDS)
                    ),
                    send_again(),
                    send_again(),
                )

            await asyncio.gather(hits(), sends())
        await _wait_until_delivered(runtime)

    assert not [k for k in statuses if k[1] >= 500], statuses
    assert statuses[("pixel", 200)] == HITS_PER_SECOND * SECONDS
    assert statuses[("send", 202)] == SMALL_SENDS + 1
    # Two clicks on "Send again": one queues the copy, the other finds it no longer unknown.
    assert (statuses[("retry", 202)], statuses[("retry", 409)]) == (1, 1)

    with runtime.database.unit_of_work(immediate=False) as s:
        subjects = Counter(s.scalars(select(Message.subject)))
        copies_by_status = Counter(s.scalars(select(RecipientCopy.status)))
        events = s.scalar(select(func.count()).select_from(TrackingEvent))
        deliveries = Counter(s.scalars(select(DemoMessage.recipient)))
    # Every send planned exactly once, with all its copies, and each copy sent once.
    assert subjects["Big"] == 1
    assert all(subjects[f"Small {i}"] == 1 for i in range(SMALL_SENDS))
    total = BIG_RECIPIENTS + 2 * SMALL_SENDS + len(tracked_copies) + 1
    assert copies_by_status == {CopyStatus.SENT: total}
    assert sum(deliveries.values()) == total and set(deliveries.values()) == {1}
    # Every acknowledged hit stored.
    assert events == HITS_PER_SECOND * SECONDS
    runtime.database.dispose()
