"""When tracking activity notifies the sender, through the real ingest writer."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import event, select

from mailbeacon.db import Database
from mailbeacon.models import Notification, User
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import GMAIL_PROXY, SCANNER, THUNDERBIRD, hit, record
from tests.factories.mail import send_mail

MINUTE = 60.0


def notifications(database: Database) -> list[Notification]:
    with database.sessions() as s:
        return list(s.scalars(select(Notification).order_by(Notification.id)))


def set_user(database: Database, user_id: int, **values: object) -> None:
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        for name, value in values.items():
            setattr(user, name, value)


def test_first_human_open_notifies_once_with_who_and_what(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally, ("ann@example.org",), subject="Our pricing")
    ann = sent.copies["ann@example.org"]
    result = record(runtime, hit(ann))
    assert result.wake == {sally: {sent.message_id}}
    (note,) = notifications(database)
    assert (note.user_id, note.kind, note.copy_id, note.message_id) == (
        sally,
        "first_open",
        ann,
        sent.message_id,
    )
    assert note.title == "ann@example.org opened “Our pricing”"
    assert note.occurrences == 1 and note.read_at is None


def test_opens_inside_the_quiet_period_collapse_and_after_it_notify_again(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0))
    record(runtime, hit(ann, at=t0 + 20 * MINUTE))
    record(runtime, hit(ann, at=t0 + 70 * MINUTE))  # 50 quiet minutes: still collapses
    (first,) = notifications(database)
    assert first.kind == "first_open" and first.occurrences == 3
    assert first.updated_at.timestamp() == pytest.approx(t0 + 70 * MINUTE, abs=0.01)
    record(runtime, hit(ann, at=t0 + 131 * MINUTE))  # 61 quiet minutes
    first, again = notifications(database)
    assert first.occurrences == 3
    assert (again.kind, again.occurrences) == ("reopen", 1)
    assert again.title == "ann@example.org opened “Our offer” again"


def test_one_batch_bumps_several_copies_notifications_each_by_its_own(
    database: Database, runtime: Runtime
) -> None:
    """PostgreSQL bumps a batch's notifications in one update joined to arrays: each
    row takes its own count and time, none another's."""
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally, ("ann@example.org", "bob@example.org"))
    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.org"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0), hit(bob, at=t0 + 1))
    record(
        runtime,
        hit(ann, at=t0 + 5 * MINUTE),
        hit(bob, at=t0 + 6 * MINUTE),
        hit(bob, at=t0 + 9 * MINUTE),
    )
    by_copy = {n.copy_id: n for n in notifications(database)}
    assert (by_copy[ann].occurrences, by_copy[bob].occurrences) == (2, 3)
    assert by_copy[ann].updated_at.timestamp() == pytest.approx(t0 + 5 * MINUTE, abs=0.01)
    assert by_copy[bob].updated_at.timestamp() == pytest.approx(t0 + 9 * MINUTE, abs=0.01)


def test_a_title_keeps_what_a_bulk_load_escapes(database: Database, runtime: Runtime) -> None:
    """Backslashes and COPY's own NULL and end markers in a subject come back as written."""
    sally = make_demo_sender(database)
    subject = "Q4 \\N prices C:\\deals \\."
    sent = send_mail(database, runtime, sally, ("ann@example.org",), subject=subject)
    record(runtime, hit(sent.copies["ann@example.org"]))
    (note,) = notifications(database)
    assert note.title == f"ann@example.org opened “{subject}”"


def test_the_quiet_period_is_each_users_own(database: Database, runtime: Runtime) -> None:
    sally = make_demo_sender(database)
    set_user(database, sally, notify_quiet_minutes=5)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0), hit(ann, at=t0 + 4 * MINUTE))
    record(runtime, hit(ann, at=t0 + 10 * MINUTE))
    assert [(n.kind, n.occurrences) for n in notifications(database)] == [
        ("first_open", 2),
        ("reopen", 1),
    ]


def test_several_opens_in_one_batch_follow_the_same_rules(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(
        runtime,
        hit(ann, at=t0 + 30 * MINUTE),
        hit(ann, at=t0),
        hit(ann, at=t0 + 2 * 60 * MINUTE),
        hit(ann, at=t0 + 2 * 60 * MINUTE + 15),
    )
    assert [(n.kind, n.occurrences) for n in notifications(database)] == [
        ("first_open", 2),
        ("reopen", 2),
    ]


def test_each_recipient_and_each_link_is_notified_separately(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally, ("ann@example.org", "bob@example.com"))
    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.com"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0), hit(bob, at=t0 + 1, ua=THUNDERBIRD))
    record(runtime, hit(ann, "click", at=t0 + 60, position=0))
    record(runtime, hit(ann, "click", at=t0 + 120, position=0))  # the same link again
    record(runtime, hit(ann, "click", at=t0 + 180, position=1))
    record(runtime, hit(bob, "click", at=t0 + 240, position=0, ua=THUNDERBIRD))
    found = [(n.kind, n.copy_id, n.link_position) for n in notifications(database)]
    assert found == [
        ("first_open", ann, None),
        ("first_open", bob, None),
        ("first_click", ann, 0),
        ("first_click", ann, 1),
        ("first_click", bob, 0),
    ]
    clicks = [n.title for n in notifications(database) if n.kind == "first_click"]
    assert clicks[0] == (
        "ann@example.org clicked “new offer” (https://example.com/offer) in “Our offer”"
    )


def test_machines_and_the_senders_own_views_never_notify_but_still_wake(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    result = record(
        runtime,
        hit(ann, at=t0, ua="Mozilla/5.0", network="apple"),  # Apple Mail privacy fetch
        hit(ann, at=t0 + 60, ua=SCANNER),
        hit(ann, "click", at=t0 + 120, ua=SCANNER, position=0),
        hit(ann, at=t0 + 180, viewer=sally),  # the sender's own browser
        hit(ann, at=t0 + 240, head=True),
    )
    assert set(result.labels) == {"apple_mpp", "scanner", "self", "prefetch"}
    assert notifications(database) == []
    assert result.wake == {sally: {sent.message_id}}


def test_an_image_proxy_open_is_a_person(database: Database, runtime: Runtime) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    record(runtime, hit(sent.copies["ann@example.org"], ua=GMAIL_PROXY, network="google"))
    (note,) = notifications(database)
    assert note.kind == "first_open"


def test_a_first_open_after_machine_hits_still_notifies(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0, ua=SCANNER))
    assert notifications(database) == []
    record(runtime, hit(ann, at=t0 + 300))
    assert [n.kind for n in notifications(database)] == ["first_open"]


def test_no_notifications_when_the_user_turned_them_off(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    set_user(database, sally, notify_tracking=False)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    result = record(runtime, hit(ann), hit(ann, "click", position=0, at=time.time() + 30))
    assert notifications(database) == []
    assert result.wake == {sally: {sent.message_id}}  # the Mail tab still updates live


def test_turning_notifications_on_later_does_not_invent_a_first_open(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    set_user(database, sally, notify_tracking=False)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(runtime, hit(ann, at=t0))
    set_user(database, sally, notify_tracking=True)
    record(runtime, hit(ann, at=t0 + 5 * MINUTE))
    assert [n.kind for n in notifications(database)] == ["reopen"]


def test_only_the_sender_is_notified(database: Database, runtime: Runtime) -> None:
    sally = make_demo_sender(database)
    tom = make_demo_sender(database, "tom@example.com", name="Tom")  # same organisation
    sent = send_mail(database, runtime, sally)
    result = record(runtime, hit(sent.copies["ann@example.org"]))
    assert {n.user_id for n in notifications(database)} == {sally}
    assert tom not in result.wake


def test_the_hook_costs_the_same_few_queries_whatever_the_batch_size(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    small = send_mail(database, runtime, sally, tuple(f"r{i}@example.org" for i in range(2)))
    large = send_mail(database, runtime, sally, tuple(f"s{i}@example.org" for i in range(60)))
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    def run(copies: list[int]) -> int:
        statements.clear()
        t0 = time.time()
        hits = [hit(c, at=t0 + i) for i, c in enumerate(copies)]
        hits += [hit(c, "click", position=0, at=t0 + 100 + i) for i, c in enumerate(copies)]
        event.listen(runtime.database.engine, "before_cursor_execute", count)
        try:
            record(runtime, *hits)
        finally:
            event.remove(runtime.database.engine, "before_cursor_execute", count)
        return len(statements)

    assert run(list(small.copies.values())) == run(list(large.copies.values()))
    assert len(notifications(database)) == 2 * 62
