"""The forwarded-open check on the database, against the rule walked out in full.

Random histories of a few copies are stored as events: people's opens from a few
networks and agents (some of them marked possibly forwarded, some without a network),
image proxies', scanners' and clicks. A batch of new hits is then judged by
``ForwardedOpens``, which looks up only what the batch's opens need; it must mark
exactly what the rule marks when walked out over every stored event.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete

from mailbeacon.db import Database
from mailbeacon.models import EventKind, EventLabel, TrackingEvent
from mailbeacon.privacy.forwarding import ForwardedOpens
from mailbeacon.tracking.events import StoredEvent
from tests.factories.accounts import make_user
from tests.factories.mail import make_message
from tests.privacy.test_forwarded_rule import Source, walked_out

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PREFIXES = ["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24", "2001:db8:1::/48", None]
# Agents as they come: spaces, quotes, commas, backslashes and non-ASCII included.
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/131.0",
    'Outlook "16.0", build\\17928',
    "Thunderbird/128.0",
    "Mail/3826.400 (Ünïcode; 日本語)",
]
LABELS = [EventLabel.HUMAN] * 4 + [EventLabel.IMAGE_PROXY, EventLabel.SCANNER]


def _event(
    rng: random.Random, n: int, copy_id: int, message_id: int, sender_id: int
) -> StoredEvent:
    click = rng.random() < 0.15
    return StoredEvent(
        uid=f"{n:032x}",
        copy_id=copy_id,
        message_id=message_id,
        sender_id=sender_id,
        kind=EventKind.CLICK if click else EventKind.OPEN,
        label=rng.choice(LABELS),
        reason="",
        link_position=0 if click else None,
        occurred_at=T0 + timedelta(minutes=rng.randrange(40)),
        ip_prefix=rng.choice(PREFIXES),
        user_agent=rng.choice(AGENTS),
    )


def _is_human_open(e: StoredEvent) -> bool:
    return e.kind == EventKind.OPEN and e.label == EventLabel.HUMAN


def test_the_lookups_on_the_database_mark_what_the_rule_marks(database: Database) -> None:
    rng = random.Random(20261202)
    with database.unit_of_work() as s:
        user = make_user(s)
        message, copies = make_message(
            s, user, recipients=tuple(f"r{n}@example.org" for n in range(4))
        )
        sender_id, message_id, copy_ids = user.id, message.id, [c.id for c in copies]
    check = ForwardedOpens()
    n = 0
    marked_in_all = 0
    for _ in range(60):
        stored: list[tuple[StoredEvent, bool]] = []
        for _ in range(rng.randrange(12)):
            n += 1
            event = _event(rng, n, rng.choice(copy_ids), message_id, sender_id)
            stored.append((event, _is_human_open(event) and rng.random() < 0.25))
        batch = []
        for _ in range(rng.randrange(1, 10)):
            n += 1
            batch.append(_event(rng, n, rng.choice(copy_ids), message_id, sender_id))
        with database.unit_of_work() as s:
            s.execute(delete(TrackingEvent))
            s.add_all(
                TrackingEvent(
                    uid=e.uid,
                    copy_id=e.copy_id,
                    message_id=e.message_id,
                    kind=e.kind,
                    link_position=e.link_position,
                    occurred_at=e.occurred_at,
                    label=e.label,
                    reason="",
                    user_agent=e.user_agent,
                    ip_prefix=e.ip_prefix,
                    possibly_forwarded=forwarded,
                )
                for e, forwarded in stored
            )
        with database.sessions() as s:
            marked = check.possibly_forwarded(s, batch)

        expected: set[str] = set()
        for copy_id in copy_ids:
            sources: list[Source] = [
                (e.ip_prefix, e.user_agent, e.occurred_at)
                for e, forwarded in stored
                if e.copy_id == copy_id and _is_human_open(e) and not forwarded
            ]
            opens = sorted(
                (e for e in batch if e.copy_id == copy_id and _is_human_open(e)),
                key=lambda e: e.occurred_at,
            )
            expected |= {e.uid for e in walked_out(opens, sources)}
        assert marked == expected, (stored, batch)
        marked_in_all += len(marked)
    # The histories marked some opens: the comparison meant something.
    assert marked_in_all > 10
