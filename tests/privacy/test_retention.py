"""Retention: per-person events past the organisation's period are deleted (daily inside
`serve`, or `mailbeacon retention run`); the emails keep their counts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from mailbeacon import cli
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import (
    LinkClickStat,
    Message,
    Notification,
    RecipientCopy,
    TrackingEvent,
    User,
)
from mailbeacon.privacy.retention import run_retention
from mailbeacon.privacy.tasks import RetentionWorker
from tests.factories.hits import THUNDERBIRD, hit, record
from tests.factories.privacy import copies_of, set_policy

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello, see <a href="https://example.com/offer">our offer</a>.</p>'
DAY = 86400.0


def count(db: Database, model: type) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


async def old_and_new(app: MailbeaconApp, admin: httpx.AsyncClient) -> tuple[int, int, int]:
    """Ann's copy was opened and clicked 40 days ago; Bob's 40 days ago and today."""
    db = app.runtime.database
    with db.sessions() as s:
        user_id = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert user_id is not None
    set_policy(db, user_id, consent_required=False, retention_days=30)
    r = await admin.post(
        "/api/messages",
        json={"to": ["ann@example.org", "bob@example.com"], "subject": "Hi", "body_html": BODY},
    )
    message_id = int(r.json()["id"])
    copies = copies_of(db, message_id)
    ann, bob = copies["ann@example.org"].id, copies["bob@example.com"].id
    then = time.time() - 40 * DAY
    record(
        app.runtime,
        hit(ann, at=then),
        hit(ann, "click", at=then + 60, position=0),
        hit(bob, at=then, ua=THUNDERBIRD),
    )
    record(app.runtime, hit(bob, ua=THUNDERBIRD, ip_prefix="198.51.100.0/24"))
    return message_id, ann, bob


async def test_retention_deletes_old_events_and_keeps_the_emails_counts(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db = app.runtime.database
    message_id, ann, bob = await old_and_new(app, admin)
    assert count(db, TrackingEvent) == 4 and count(db, LinkClickStat) == 1
    assert count(db, Notification) > 0

    report = run_retention(db)
    assert report.events == 3 and report.copies == 1
    with db.sessions() as s:
        left = list(s.scalars(select(TrackingEvent.copy_id)))
        ann_copy, bob_copy = s.get(RecipientCopy, ann), s.get(RecipientCopy, bob)
        message = s.get(Message, message_id)
        assert ann_copy is not None and bob_copy is not None and message is not None
        # Ann's copy has nothing recent: its figures go with its events.
        assert (ann_copy.open_count, ann_copy.click_count, ann_copy.first_open_at) == (0, 0, None)
        assert bob_copy.open_count == 2  # a recent event: its figures stay until they age out
        # The email's figures were anonymous counts all along: they do not move.
        assert (message.open_count, message.click_count) == (3, 1)
        notified = set(s.scalars(select(Notification.copy_id)))
    assert left == [bob] and count(db, LinkClickStat) == 0
    assert ann not in notified
    # Idempotent: a second run (another process, tomorrow) finds nothing more.
    again = run_retention(db)
    assert (again.events, again.copies) == (0, 0)


async def test_retention_runs_from_the_command_line_and_inside_serve(
    app: MailbeaconApp,
    admin: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = app.runtime.database
    await old_and_new(app, admin)
    monkeypatch.setenv("MAILBEACON_DATABASE_URL", settings.database_url())
    monkeypatch.setenv("MAILBEACON_DATA_DIR", str(Path(settings.DATA_DIR)))
    assert cli.main(["retention", "run"]) == 0
    assert "retention: 3 events deleted, 1 copies' figures reset" in capsys.readouterr().out
    assert count(db, TrackingEvent) == 1

    # The job `serve` runs: shortly after start, then every interval.
    worker = RetentionWorker(db, interval=0.2, first_run=0.0)
    await worker.start()
    try:
        with db.sessions() as s:
            bob = s.scalar(select(TrackingEvent.copy_id))
        assert bob is not None
        record(app.runtime, hit(bob, at=time.time() - 31 * DAY, ua="Old/1.0"))
        assert count(db, TrackingEvent) == 2
        for _ in range(50):
            if count(db, TrackingEvent) == 1:
                break
            await asyncio.sleep(0.1)
        assert count(db, TrackingEvent) == 1
    finally:
        await worker.stop()
