"""The outbox worker end to end: real database, real aiosmtpd server, real tokens."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import signal
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.exc import OperationalError, SQLAlchemyError

from mailbeacon.db import Database
from mailbeacon.mail import queue
from mailbeacon.models import CopyStatus, Message, OutboxEntry, RecipientCopy
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer

pytestmark = pytest.mark.asyncio

ROOT = Path(__file__).resolve().parents[2]
VISIBLE = ("From", "To", "Cc", "Subject", "Date", "Message-ID")


def plan_send(database: Database, runtime: Runtime, port: int, **fields: object) -> int:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=port)
        return plan(s, runtime, user, **fields).id


def copies(database: Database, message_id: int | None = None) -> dict[str, RecipientCopy]:
    with database.sessions() as s:
        query = select(RecipientCopy).order_by(RecipientCopy.id)
        if message_id is not None:
            query = query.where(RecipientCopy.message_id == message_id)
        return {c.address: c for c in s.scalars(query)}


def parse(data: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


async def test_each_recipient_gets_its_own_copy_with_identical_visible_headers(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    message_id = plan_send(
        database,
        runtime,
        sink.port,
        to=["Ann <ann@example.org>, bob@example.org"],
        cc=["carl@example.org"],
        bcc=["dora@example.org", "Eve Hidden <eve@example.org>"],
        subject="Our offer",
    )
    worker = runtime.make_outbox_worker()
    assert await worker.run_once() == 5

    handler: SinkHandler = sink.handler
    received = handler.received_by()
    # One SMTP transaction per recipient, each with that one envelope recipient.
    assert sorted(received) == [
        "ann@example.org",
        "bob@example.org",
        "carl@example.org",
        "dora@example.org",
        "eve@example.org",
    ]
    assert all(len(r) == 1 and r[0].rcpt_tos == [address] for address, r in received.items())
    assert {r.mail_from for r in handler.accepted} == {"sally@example.com"}

    by_address = copies(database, message_id)
    messages = {address: parse(r[0].data) for address, r in received.items()}
    headers = {address: [(k, str(msg[k])) for k in VISIBLE] for address, msg in messages.items()}
    assert len({tuple(h) for h in headers.values()}) == 1  # identical for everyone
    first = messages["ann@example.org"]
    assert first["To"] == "Ann <ann@example.org>, bob@example.org"
    assert first["Cc"] == "carl@example.org"
    assert first["From"] == "Sally Seller <sally@example.com>"
    with database.sessions() as s:
        message = s.get_one(Message, message_id)
        assert first["Message-ID"] == message.message_id_header
        assert message.sent_at is not None
        assert s.scalars(select(OutboxEntry.completed_at)).one() is not None

    open_tokens: set[str] = set()
    click_tokens: set[str] = set()
    for address, msg in messages.items():
        raw_headers = received[address][0].data.split(b"\r\n\r\n", 1)[0].lower()
        # Bcc recipients appear in no copy's headers, their own included.
        assert b"dora@" not in raw_headers and b"eve@" not in raw_headers
        assert b"\nbcc:" not in b"\n" + raw_headers  # no Bcc field at all
        assert not msg.defects and not any(part.defects for part in msg.walk())
        assert msg.get_content_type() == "multipart/alternative"
        html_part, text_part = msg.get_body(("html",)), msg.get_body(("plain",))
        assert html_part is not None and text_part is not None
        html, text = html_part.get_content(), text_part.get_content()
        copy = by_address[address]
        assert (copy.status, copy.attempts) == (CopyStatus.SENT, 1)
        assert copy.sent_at is not None and copy.smtp_reply.startswith("250")

        (open_token,) = re.findall(r"/t/o/([A-Za-z0-9_-]+)\.gif", html)
        assert runtime.codec.read_open_token(open_token) == copy.id
        open_tokens.add(open_token)
        html_clicks = re.findall(r"/t/c/([A-Za-z0-9_-]+)", html)
        text_clicks = re.findall(r"/t/c/([A-Za-z0-9_-]+)", text)
        assert len(html_clicks) == 2 and len(text_clicks) == 2
        for token in html_clicks + text_clicks:
            target = runtime.codec.read_click_token(token)
            assert target.copy_id == copy.id
            assert target.url in (
                "https://example.com/offer?x=1&y=2",
                "https://example.com/pricing",
            )
        click_tokens.update(html_clicks)
        # The text part is readable: "new offer (<tracked link>)".
        assert re.search(r"new offer \(http://mb\.test/t/c/[A-Za-z0-9_-]+\)", text)
        assert "example.com" not in html and "example.com/offer" not in text
    assert len(open_tokens) == 5 and len(click_tokens) == 10


async def test_a_temporary_failure_is_retried_and_delivered_once(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    sink.handler.data_replies.append("451 4.7.1 Greylisted, try again")
    message_id = plan_send(database, runtime, sink.port)
    # Backoff is zero in tests, so the retry falls due within the same pass.
    assert await runtime.make_outbox_worker().run_once() == 2
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["ann@example.org"]]
    assert sink.handler.data_calls == 2
    copy = copies(database, message_id)["ann@example.org"]
    assert (copy.status, copy.attempts) == (CopyStatus.SENT, 2)


async def test_a_temporary_failure_waits_for_its_backoff(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    sink.handler.data_replies.append("451 4.3.0 Try later")
    message_id = plan_send(database, runtime, sink.port)
    worker = runtime.make_outbox_worker()
    worker.backoff_seconds = 600
    assert await worker.run_once() == 1
    copy = copies(database, message_id)["ann@example.org"]
    assert (copy.status, copy.smtp_reply) == (CopyStatus.QUEUED, "451 4.3.0 Try later")
    assert copy.next_attempt_at is not None and copy.claimed_by is None
    assert await worker.run_once() == 0  # not due yet
    assert sink.handler.accepted == []
    if database.is_sqlite:
        # Timestamps written on the send path are stored exactly as the ORM stores
        # them (SQLite compares them as text).
        with database.engine.connect() as conn:
            stored = conn.exec_driver_sql(
                "SELECT c.next_attempt_at, m.created_at FROM recipient_copies c"
                " JOIN messages m ON m.id = c.message_id"
            ).one()
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", stored[0])
        assert len(stored[0]) == len(stored[1])


async def test_temporary_failures_give_up_after_the_last_attempt(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    sink.handler.data_replies.extend(["452 4.3.1 Out of space"] * 3)
    message_id = plan_send(database, runtime, sink.port)
    worker = runtime.make_outbox_worker()
    worker.max_attempts = 3
    assert await worker.run_once() == 3
    copy = copies(database, message_id)["ann@example.org"]
    assert copy.status == CopyStatus.FAILED
    assert copy.smtp_reply == "gave up after 3 attempts; last answer: 452 4.3.1 Out of space"


async def test_a_refused_recipient_fails_alone_with_the_servers_reply(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    sink.handler.refuse_rcpt["bob@example.org"] = "550 5.1.1 <bob@example.org>: no such user"
    message_id = plan_send(
        database,
        runtime,
        sink.port,
        to=["ann@example.org", "bob@example.org"],
        cc=["carl@example.org"],
    )
    assert await runtime.make_outbox_worker().run_once() == 3
    by_address = copies(database, message_id)
    assert by_address["bob@example.org"].status == CopyStatus.FAILED
    assert by_address["bob@example.org"].smtp_reply == ("550 5.1.1 <bob@example.org>: no such user")
    assert by_address["bob@example.org"].attempts == 1
    assert by_address["ann@example.org"].status == CopyStatus.SENT
    assert by_address["carl@example.org"].status == CopyStatus.SENT
    assert sorted(sink.handler.received_by()) == ["ann@example.org", "carl@example.org"]


async def test_an_unreachable_server_is_retried_later(database: Database, runtime: Runtime) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    message_id = plan_send(database, runtime, port)
    worker = runtime.make_outbox_worker()
    worker.backoff_seconds = 60
    assert await worker.run_once() == 1
    copy = copies(database, message_id)["ann@example.org"]
    assert copy.status == CopyStatus.QUEUED
    assert "the connection was refused" in copy.smtp_reply


async def test_two_workers_at_once_never_send_the_same_copy(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    addresses = [f"r{i}@example.org" for i in range(40)]
    message_id = plan_send(database, runtime, sink.port, to=addresses[:2], bcc=addresses[2:])
    one, two = runtime.make_outbox_worker(concurrency=4), runtime.make_outbox_worker(concurrency=4)
    handled = await asyncio.gather(one.run_once(), two.run_once())
    assert sum(handled) == 40
    counts = Counter(r for rec in sink.handler.accepted for r in rec.rcpt_tos)
    assert sorted(counts) == sorted(addresses)
    assert set(counts.values()) == {1}
    by_address = copies(database, message_id)
    assert {c.status for c in by_address.values()} == {CopyStatus.SENT}
    assert {c.attempts for c in by_address.values()} == {1}


async def test_a_claim_takes_at_most_its_limit(database: Database, runtime: Runtime) -> None:
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.mail import queue

    message_id = plan_send(database, runtime, 2525, bcc=[f"r{i}@example.org" for i in range(6)])
    with database.engine.connect().execution_options(sqlite_immediate=True) as conn:
        with conn.begin():
            first = queue.claim_copies(conn, "w1", utcnow(), 2)
        with conn.begin():
            second = queue.claim_copies(conn, "w2", utcnow(), 3)
    assert len(first) == 2 and len(second) == 3
    assert not {c.id for c in first} & {c.id for c in second}
    by_address = copies(database, message_id)
    assert Counter(c.claimed_by for c in by_address.values()) == {"w1": 2, "w2": 3, None: 2}
    assert all(c.attempts == 1 for c in by_address.values() if c.claimed_by)


async def test_a_reserved_copy_found_sending_starts_only_if_its_start_was_in_doubt(
    database: Database, runtime: Runtime
) -> None:
    # A reserved copy found `sending` is in flight (a stale entry of the worker's
    # reserve must not start it twice), unless the worker names it as started by a
    # round whose answer was lost: then it starts, counted once. Given back unstarted,
    # such a copy leaves `sending` for the queue, its attempt given back.
    from mailbeacon.kit.clock import utcnow

    message_id = plan_send(database, runtime, 2525, bcc=["ann@example.org", "bob@example.org"])
    conn = database.engine.connect().execution_options(sqlite_immediate=True)
    if not database.is_sqlite:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
    send = queue.SendQueue(conn)

    def round_(*start: int, **kwargs: Any) -> queue.Round:
        return send.round(
            "w1", utcnow(), [], 0, messages_started=set(), known_messages=(), start=start, **kwargs
        )

    with conn:
        ann, bob = round_(reserve=2, establish=True).reserved
        assert round_(ann.id, bob.id).started == {ann.id, bob.id}
        assert round_(ann.id, bob.id, restart={bob.id}).started == {bob.id}
        by_address = copies(database, message_id)
        assert {(c.status, c.attempts) for c in by_address.values()} == {(CopyStatus.SENDING, 1)}
        given_back = [
            queue.Settlement(
                c.id,
                message_id,
                CopyStatus.QUEUED,
                "",
                release=True,
                started=False,
                start_in_doubt=c is bob,
            )
            for c in (ann, bob)
        ]
        send.round("w1", utcnow(), given_back, 0, messages_started=set(), known_messages=())
    by_address = copies(database, message_id)
    assert (by_address["ann@example.org"].status, by_address["ann@example.org"].attempts) == (
        CopyStatus.SENDING,
        1,
    )
    bob_now = by_address["bob@example.org"]
    assert (bob_now.status, bob_now.claimed_by, bob_now.attempts) == (CopyStatus.QUEUED, None, 0)


async def test_a_worker_holds_each_copy_once_whatever_a_round_returns(
    database: Database, runtime: Runtime
) -> None:
    # A round may return a copy the worker still holds: one its reserve still has an
    # entry for (released by another worker's recovery, or queued again by the user),
    # or one in flight. The old reserve entry goes; a copy in flight is not begun again.
    worker = runtime.make_outbox_worker()

    def copy(copy_id: int) -> queue.ClaimedCopy:
        return queue.ClaimedCopy(copy_id, 1, f"r{copy_id}@example.org", None, "Hi", 1)

    worker._reserved.extend([copy(1), copy(2), copy(3)])
    # Were 4's give-back a start in doubt, it would put the copy in flight back.
    worker._start_in_doubt.add(4)
    finished: list[queue.Settlement] = []
    got = queue.Round(
        claimed=[copy(3), copy(6)],
        started=set(),
        reserved=[copy(2), copy(4), copy(5)],
        contexts={},
    )
    begin = worker._take_new(got, [copy(4), copy(6)], finished)
    assert [c.id for c in begin] == [3]
    assert [c.id for c in worker._reserved] == [1, 2, 5]
    assert [(s.copy_id, s.started, s.start_in_doubt) for s in finished] == [(4, False, False)]


async def test_reserved_copies_are_not_due_to_others(database: Database, runtime: Runtime) -> None:
    # A worker polls has_due_copies to know whether to start a pass: copies another
    # worker holds reserved are not for it to send.
    from mailbeacon.kit.clock import utcnow

    plan_send(database, runtime, 2525, bcc=["ann@example.org", "bob@example.org"])
    conn = database.engine.connect().execution_options(sqlite_immediate=True)
    if not database.is_sqlite:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")

    def due() -> bool:
        with database.engine.connect() as other:
            return queue.has_due_copies(other, utcnow())

    with conn:
        send = queue.SendQueue(conn)
        got = send.round(
            "w1",
            utcnow(),
            [],
            0,
            messages_started=set(),
            known_messages=(),
            reserve=1,
            establish=True,
        )
        assert len(got.reserved) == 1
        assert due()
        send.round("w1", utcnow(), [], 0, messages_started=set(), known_messages=(), reserve=1)
        assert not due()


def plan_stalling_on_bob(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> int:
    """An email to ann with bob and carl in Bcc, whose sink holds bob's DATA unanswered
    (``handler.stalled`` is set then) and answers the others at once."""
    handler: SinkHandler = sink.handler
    answer = handler.handle_DATA

    async def stall_bob(server: Any, session: Any, envelope: Any) -> str:
        handler.stall = envelope.rcpt_tos == ["bob@example.org"]
        return await answer(server, session, envelope)

    monkeypatch.setattr(handler, "handle_DATA", stall_bob)
    return plan_send(
        database,
        runtime,
        sink.port,
        to=["ann@example.org"],
        bcc=["bob@example.org", "carl@example.org"],
    )


async def kill_worker_process_when_stalled(runtime: Runtime, handler: SinkHandler) -> None:
    """Run `mailbeacon worker` (one lane) until the sink stalls a DATA, then SIGKILL it."""
    env = dict(
        os.environ,
        MAILBEACON_DATABASE_URL=runtime.database.url,
        MAILBEACON_SEND_CONCURRENCY="1",
        MAILBEACON_DEMO_SMTP_PORT="0",
        MAILBEACON_ALLOW_LOOPBACK_MAIL_SERVERS="1",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mailbeacon.cli",
        "worker",
        "--data-dir",
        str(runtime.settings.DATA_DIR),
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        await asyncio.wait_for(handler.stalled.wait(), 30)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()


async def test_a_worker_killed_mid_send_leaves_unknown_and_nothing_twice(
    database: Database, runtime: Runtime, sink: SmtpPeer, tmp_path: Path
) -> None:
    handler: SinkHandler = sink.handler
    handler.stall = True
    message_id = plan_send(
        database,
        runtime,
        sink.port,
        to=["ann@example.org"],
        bcc=["bob@example.org", "carl@example.org"],
    )
    await kill_worker_process_when_stalled(runtime, handler)
    assert [r.rcpt_tos for r in handler.accepted] == [["ann@example.org"]]
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENDING

    handler.stall = False
    worker = runtime.make_outbox_worker()
    # The dead worker's lock goes when its process does; PostgreSQL may take a
    # moment to notice the closed connection.
    for _ in range(100):
        if await worker.recover_orphans():
            break
        await asyncio.sleep(0.05)
    assert await worker.run_once() == 2

    by_address = copies(database, message_id)
    ann = by_address["ann@example.org"]
    assert ann.status == CopyStatus.UNKNOWN
    assert "stopped during the SMTP transaction" in ann.smtp_reply
    assert by_address["bob@example.org"].status == CopyStatus.SENT
    assert by_address["carl@example.org"].status == CopyStatus.SENT
    counts = Counter(r for rec in handler.accepted for r in rec.rcpt_tos)
    assert counts == {"ann@example.org": 1, "bob@example.org": 1, "carl@example.org": 1}
    # Never resent by a worker without the user's say.
    assert await runtime.make_outbox_worker().run_once() == 0
    with database.sessions() as s:
        assert s.scalars(select(OutboxEntry.completed_at)).one() is not None


async def test_a_worker_killed_mid_send_of_a_reserved_copy_sends_nothing_twice(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The worker reserves bob and carl with ann's claim, then starts bob and settles
    # ann in a commit that does not wait for the disk; killed while bob's DATA is
    # unanswered, it leaves ann sent, bob in doubt and carl still reserved. Its
    # process died, not the machine nor the database server: carl goes back.
    handler: SinkHandler = sink.handler
    answer = handler.handle_DATA
    message_id = plan_stalling_on_bob(database, runtime, sink, monkeypatch)
    await kill_worker_process_when_stalled(runtime, handler)
    by_address = copies(database, message_id)
    assert by_address["ann@example.org"].status == CopyStatus.SENT
    assert by_address["bob@example.org"].status == CopyStatus.SENDING
    carl = by_address["carl@example.org"]
    assert carl.status == CopyStatus.QUEUED and carl.attempts == 0
    assert carl.claimed_by is not None

    handler.stall = False
    monkeypatch.setattr(handler, "handle_DATA", answer)
    worker = runtime.make_outbox_worker()
    for _ in range(100):
        if await worker.recover_orphans():
            break
        await asyncio.sleep(0.05)
    assert await worker.run_once() == 1

    by_address = copies(database, message_id)
    assert by_address["ann@example.org"].status == CopyStatus.SENT
    assert by_address["bob@example.org"].status == CopyStatus.UNKNOWN
    assert by_address["carl@example.org"].status == CopyStatus.SENT
    assert by_address["carl@example.org"].attempts == 1
    counts = Counter(r for rec in handler.accepted for r in rec.rcpt_tos)
    assert counts == {"ann@example.org": 1, "bob@example.org": 1, "carl@example.org": 1}
    assert await runtime.make_outbox_worker().run_once() == 0


@pytest.mark.parametrize("died_in", ["this boot", "another boot", "unrecorded"])
async def test_reservations_of_a_dead_worker_go_back_only_if_no_commit_was_lost(
    database: Database, runtime: Runtime, sink: SmtpPeer, died_in: str
) -> None:
    # A reservation's start may have been committed without waiting for the disk.
    # On SQLite only a worker known to have died in this boot of the machine lost no
    # commit. On PostgreSQL its crash marker says the server did not crash since it
    # wrote it ("this boot"); crash recovery empties the table ("another boot"), as
    # does a worker that never wrote one ("unrecorded").
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.mail.tasks import Presence, machine_boot_id

    message_id = plan_send(
        database, runtime, sink.port, to=["ann@example.org"], bcc=["bob@example.org"]
    )
    with database.unit_of_work() as s:
        s.execute(
            update(RecipientCopy)
            .where(RecipientCopy.message_id == message_id)
            .values(claimed_by="gone:1:abcd", claimed_at=utcnow())
        )
    lock = Presence(database, "gone:1:abcd")
    if died_in != "unrecorded" and lock._dir is not None:
        lock._dir.mkdir(parents=True, exist_ok=True)
        boot = machine_boot_id() if died_in == "this boot" else b"another-boot"
        lock._lock_path("gone:1:abcd").write_bytes(boot or b"")
    if not database.is_sqlite and died_in == "this boot":
        set_crash_marker(database, "gone:1:abcd")
    worker = runtime.make_outbox_worker()
    if database.is_sqlite:
        back = died_in == "this boot" and machine_boot_id() is not None
    else:
        back = died_in == "this boot"
    assert await worker.recover_orphans() == (0 if back else 2)
    assert await worker.run_once() == (2 if back else 0)
    statuses = {c.status for c in copies(database, message_id).values()}
    assert statuses == {CopyStatus.SENT if back else CopyStatus.UNKNOWN}
    assert len(sink.handler.accepted) == (2 if back else 0)
    if not database.is_sqlite:
        # Judged once: the dead worker's marker is gone, the live one's written.
        assert crash_markers(database) == {worker.worker_id}


def set_crash_marker(database: Database, worker_id: str) -> None:
    with database.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO outbox_crash_markers (worker_id) VALUES (:w)"), {"w": worker_id}
        )


def crash_markers(database: Database) -> set[str]:
    with database.engine.connect() as conn:
        return set(conn.scalars(text("SELECT worker_id FROM outbox_crash_markers")))


def lose_recent_commits(database: Database, message_id: int, **rows: dict[str, object]) -> None:
    """What a crash of the PostgreSQL server does to commits that did not wait for the
    disk: it empties the unlogged crash markers, and rolls the rows those commits wrote
    back to what the last flushed commit left (given by address)."""
    with database.engine.begin() as conn:
        conn.execute(text("DELETE FROM outbox_crash_markers"))
        for address, values in rows.items():
            conn.execute(
                update(RecipientCopy)
                .where(RecipientCopy.message_id == message_id, RecipientCopy.address == address)
                .values(**values)
            )
        conn.execute(update(Message).where(Message.id == message_id).values(sent_at=None))


@pytest.mark.parametrize("crashed", [False, True])
async def test_a_dead_worker_after_a_database_crash_sends_nothing_twice(
    database: Database,
    runtime: Runtime,
    sink: SmtpPeer,
    monkeypatch: pytest.MonkeyPatch,
    crashed: bool,
) -> None:
    # The worker claims ann and reserves bob and carl, settles ann and starts bob in a
    # commit that does not wait for the disk, and is killed during bob's DATA. If the
    # server then crashes too, that commit may be gone: ann is `sending` again, bob
    # reserved as if never started, and the marker gone. Bob must not be sent again,
    # nor carl (it cannot be told apart from bob); without the crash, carl goes out.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's crash marker (SQLite: the boot id, tested above)")
    handler: SinkHandler = sink.handler
    answer = handler.handle_DATA
    message_id = plan_stalling_on_bob(database, runtime, sink, monkeypatch)
    await kill_worker_process_when_stalled(runtime, handler)
    assert len(crash_markers(database)) == 1
    if crashed:
        lose_recent_commits(
            database,
            message_id,
            **{
                "ann@example.org": {"status": CopyStatus.SENDING, "sent_at": None},
                "bob@example.org": {"status": CopyStatus.QUEUED, "attempts": 0},
            },
        )
    handler.stall = False
    monkeypatch.setattr(handler, "handle_DATA", answer)
    worker = runtime.make_outbox_worker()
    for _ in range(100):
        if await worker.recover_orphans():
            break
        await asyncio.sleep(0.05)
    assert await worker.run_once() == (0 if crashed else 1)
    by_address = copies(database, message_id)
    expected = {
        "ann@example.org": CopyStatus.UNKNOWN if crashed else CopyStatus.SENT,
        "bob@example.org": CopyStatus.UNKNOWN,
        "carl@example.org": CopyStatus.UNKNOWN if crashed else CopyStatus.SENT,
    }
    assert {a: c.status for a, c in by_address.items()} == expected
    counts = Counter(r for rec in handler.accepted for r in rec.rcpt_tos)
    assert counts == {"ann@example.org": 1, "bob@example.org": 1} | (
        {} if crashed else {"carl@example.org": 1}
    )
    assert await runtime.make_outbox_worker().run_once() == 0


@pytest.mark.parametrize("crashed", ["no", "yes", "with the round's answer"])
async def test_a_live_worker_repairs_what_a_database_crash_took_and_sends_nothing_twice(
    database: Database,
    runtime: Runtime,
    sink: SmtpPeer,
    monkeypatch: pytest.MonkeyPatch,
    crashed: str,
) -> None:
    # One lane: ann is claimed (bob and carl reserved), sent, and settled with bob's
    # start in a commit that does not wait for the disk; bob's DATA then waits. The
    # server "crashes": ann's outcome and bob's start are lost, and the marker. The
    # worker lives on: when bob's answer comes, its round finds the marker gone and
    # changes nothing (or fails, its connection gone with the server); the worker puts
    # back what it knows (bob started, ann sent, carl never started), writes its
    # marker again, and carries on. Each copy goes out once.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's crash marker (on SQLite the machine takes the worker)")
    handler: SinkHandler = sink.handler
    message_id = plan_stalling_on_bob(database, runtime, sink, monkeypatch)
    worker = runtime.make_outbox_worker(poll_seconds=0.05, concurrency=1)
    await worker.start()
    try:
        await asyncio.wait_for(handler.stalled.wait(), 10)
        before = copies(database, message_id)
        assert before["ann@example.org"].status == CopyStatus.SENT
        assert (before["bob@example.org"].status, before["bob@example.org"].attempts) == (
            CopyStatus.SENDING,
            1,
        )
        assert before["carl@example.org"].claimed_by == worker.worker_id
        if crashed != "no":
            lose_recent_commits(
                database,
                message_id,
                **{
                    "ann@example.org": {"status": CopyStatus.SENDING, "sent_at": None},
                    "bob@example.org": {"status": CopyStatus.QUEUED, "attempts": 0},
                },
            )
        if crashed == "with the round's answer":
            real_round = queue.SendQueue.round
            failures = [True]

            def failing_round(self: queue.SendQueue, *args: Any, **kwargs: Any) -> Any:
                if failures:
                    failures.pop()
                    raise OperationalError(
                        "WITH ...", {}, Exception("server closed the connection")
                    )
                return real_round(self, *args, **kwargs)

            monkeypatch.setattr(queue.SendQueue, "round", failing_round)
        handler.stall = False
        handler.release.set()
        for _ in range(250):
            if {c.status for c in copies(database, message_id).values()} == {CopyStatus.SENT}:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    by_address = copies(database, message_id)
    assert {c.status for c in by_address.values()} == {CopyStatus.SENT}
    assert {c.attempts for c in by_address.values()} == {1}
    counts = Counter(r for rec in handler.accepted for r in rec.rcpt_tos)
    assert counts == {"ann@example.org": 1, "bob@example.org": 1, "carl@example.org": 1}
    assert crash_markers(database) == {worker.worker_id}
    with database.sessions() as s:
        assert s.get(Message, message_id).sent_at is not None  # type: ignore[union-attr]
        assert s.scalars(select(OutboxEntry.completed_at)).one() is not None


@pytest.mark.parametrize("default", ["on", "off"])
async def test_each_commit_of_the_worker_waits_for_the_disk_or_not_as_it_must(
    database: Database,
    runtime: Runtime,
    sink: SmtpPeer,
    monkeypatch: pytest.MonkeyPatch,
    default: str,
) -> None:
    # Whatever the session's default: the rounds that claim or reserve, the repair and
    # the end of a pass must wait for the disk (they make a copy a lane's own, or vouch
    # for the worker's earlier commits), where a stronger default is kept; rounds that
    # only start and settle need not. Read inside each transaction, before its commit.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's synchronous_commit (SQLite: PRAGMA synchronous)")
    from sqlalchemy import event

    from mailbeacon.kit.clock import utcnow
    from mailbeacon.mail import tasks

    def session_default(dbapi_conn: Any, record: Any) -> None:
        dbapi_conn.execute(f"SET synchronous_commit = {default}")
        dbapi_conn.commit()

    engine = runtime.database.engine  # the worker's
    engine.dispose()
    event.listen(engine, "connect", session_default)
    seen: list[tuple[str, str]] = []

    def show(conn: Any) -> str:
        value = conn.exec_driver_sql("SHOW synchronous_commit").scalar()
        assert isinstance(value, str)
        return value

    # A round runs on the driver's own connection (queue.SendQueue._run): the setting
    # is read on it right after the round's statement, before SQLAlchemy commits.
    run = queue.SendQueue._run

    def run_and_show(self: Any, raw: Any, statement: str, *args: Any, **kwargs: Any) -> Any:
        result = run(self, raw, statement, *args, **kwargs)
        if statement.startswith("WITH marker"):
            kind = "durable" if "FOR UPDATE SKIP LOCKED" in statement else "lazy"
            rows = result.fetchall()
            seen.append((kind, raw.execute("SHOW synchronous_commit").fetchone()[0]))
            result = SimpleNamespace(fetchall=lambda: rows)
        return result

    durable = "local" if default == "off" else default
    message_id = plan_send(
        database, runtime, sink.port, to=["ann@example.org"], bcc=["bob@example.org"]
    )
    # The worker runs its rounds in autocommit, each statement its own transaction;
    # here they run in one that stays open after the statement, to be read.
    with monkeypatch.context() as patched, engine.connect() as conn:
        patched.setattr(queue.SendQueue, "_run", run_and_show)
        send = queue.SendQueue(conn)
        (ann,) = send.round(
            "w1",
            utcnow(),
            [],
            0,
            messages_started=set(),
            known_messages=(),
            reserve=1,
            establish=True,
        ).reserved
        send.round("w1", utcnow(), [], 0, messages_started=set(), known_messages=(), start=[ann.id])
        settled = queue.Settlement(ann.id, message_id, CopyStatus.SENT, "250 OK")
        send.round("w1", utcnow(), [settled], 0, messages_started=set(), known_messages=())
    assert seen == [("durable", durable), ("lazy", "off"), ("lazy", "off")]

    seen.clear()

    def recorded(name: str, function: Any) -> Any:
        def call(conn: Any, *args: Any, **kwargs: Any) -> Any:
            result = function(conn, *args, **kwargs)
            seen.append((name, show(conn)))
            return result

        return call

    for name in ("repair_own_copies", "flush_own_commits"):
        monkeypatch.setattr(tasks.send_queue, name, recorded(name, getattr(queue, name)))
    worker = runtime.make_outbox_worker(concurrency=1)
    assert await worker.run_once() == 1
    assert worker._unsynced == {}
    worker._repair([], [])
    assert seen == [("flush_own_commits", durable), ("repair_own_copies", durable)]
    with engine.connect() as conn:
        assert show(conn) == default  # only ever SET LOCAL


async def test_outcomes_whose_commit_a_crash_took_at_the_end_of_a_pass_are_written_again(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server crashes after the pass's last round (whose commit did not wait) and
    # before the pass ends: ann's outcome is gone, and the marker. Nothing else is
    # due, yet the idle worker writes ann's outcome again; it is not sent again, and
    # does not stay `sending` to become unknown.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's crash marker (on SQLite the machine takes the worker)")
    message_id = plan_send(database, runtime, sink.port, to=["ann@example.org"])
    worker = runtime.make_outbox_worker(poll_seconds=0.05, concurrency=1)
    end_pass = worker._end_pass
    crashes = [True]

    def crash_then_end_pass(touched: set[int]) -> None:
        if crashes and worker._unsynced:
            crashes.pop()
            lose_recent_commits(
                database, message_id, **{"ann@example.org": {"status": CopyStatus.SENDING}}
            )
        end_pass(touched)

    monkeypatch.setattr(worker, "_end_pass", crash_then_end_pass)
    await worker.start()
    try:
        for _ in range(250):
            ann = copies(database, message_id)["ann@example.org"]
            if not crashes and ann.status == CopyStatus.SENT and not worker._unsynced:
                break
            await asyncio.sleep(0.02)
        # Written again, and made durable by the end of that pass.
        assert not worker._unsynced
    finally:
        await worker.stop()
    assert not crashes
    ann = copies(database, message_id)["ann@example.org"]
    assert (ann.status, ann.attempts) == (CopyStatus.SENT, 1)
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["ann@example.org"]]
    assert crash_markers(database) == {worker.worker_id}


async def test_stopping_gives_back_reserved_copies_untried(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailbeacon.mail.tasks as tasks

    monkeypatch.setattr(tasks, "STOP_GRACE_SECONDS", 0.2)
    handler: SinkHandler = sink.handler
    handler.stall = True
    message_id = plan_send(
        database,
        runtime,
        sink.port,
        to=["ann@example.org"],
        bcc=["bob@example.org", "carl@example.org"],
    )
    worker = runtime.make_outbox_worker(poll_seconds=0.05, concurrency=1)
    await worker.start()
    await asyncio.wait_for(handler.stalled.wait(), 10)
    await worker.stop()
    by_address = copies(database, message_id)
    assert by_address["ann@example.org"].status == CopyStatus.UNKNOWN
    for address in ("bob@example.org", "carl@example.org"):
        copy = by_address[address]
        assert (copy.status, copy.claimed_by, copy.attempts) == (CopyStatus.QUEUED, None, 0)
    handler.stall = False
    handler.release.set()
    assert await runtime.make_outbox_worker().run_once() == 2


async def test_a_live_worker_is_not_declared_dead(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    handler: SinkHandler = sink.handler
    handler.stall = True
    message_id = plan_send(database, runtime, sink.port)
    busy = runtime.make_outbox_worker(poll_seconds=0.05)
    await busy.start()
    try:
        await asyncio.wait_for(handler.stalled.wait(), 10)
        other = runtime.make_outbox_worker()
        assert await other.recover_orphans() == 0
        assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENDING
        handler.release.set()
        for _ in range(200):
            if copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT:
                break
            await asyncio.sleep(0.02)
    finally:
        await busy.stop()
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT


def reserved_by(database: Database, worker_id: str) -> list[str]:
    """The addresses of the copies a worker holds reserved, in the order it starts them."""
    with database.engine.connect() as conn:
        return list(
            conn.scalars(
                select(RecipientCopy.address)
                .where(
                    RecipientCopy.claimed_by == worker_id,
                    RecipientCopy.status == CopyStatus.QUEUED,
                )
                .order_by(RecipientCopy.id)
            )
        )


def drop_presence_session(database: Database, worker: Any) -> None:
    """What a restart of the server, a terminated backend or the network does to the
    session that holds a live worker's presence lock."""
    pid = worker.presence._pg.connection.driver_connection.info.backend_pid
    with database.engine.begin() as conn:
        conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    # pg_terminate_backend only signals the backend: wait until it has gone, and its
    # locks with it (under load a test's next step came first, and found the lock held).
    gone = text(
        "SELECT NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = :pid)"
        " AND NOT EXISTS (SELECT 1 FROM pg_locks WHERE pid = :pid)"
    )
    for _ in range(500):
        with database.engine.connect() as conn:
            if conn.scalar(gone, {"pid": pid}):
                return
        time.sleep(0.01)
    raise AssertionError(f"backend {pid} still there 5 s after it was terminated")


async def settled(database: Database, message_id: int, pending: Any) -> None:
    """Wait until no copy of the message is ``pending`` (a predicate on the copies)."""
    for _ in range(500):
        if not any(pending(c) for c in copies(database, message_id).values()):
            return
        await asyncio.sleep(0.02)


async def test_a_live_worker_taken_for_dead_sends_each_copy_once(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The session that holds a live worker's presence lock is dropped while both its
    # lanes are mid-send. Another worker's recovery takes it for dead: its copies in
    # flight become unknown and, its crash marker being there, its reservations go
    # back to the queue. The worker still holds them in its reserve and reserves the
    # oldest due again, the same copies, while the old entries wait: each copy must
    # still go out once. It also takes its lock again at once, not a minute later.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's presence lock (on SQLite a flock the process holds)")
    handler: SinkHandler = sink.handler
    addresses = [f"r{n:02d}@example.org" for n in range(1, 11)]
    seen: Counter[str] = Counter()
    gates: dict[str, asyncio.Event] = {}
    slow: list[str] = []

    async def data(server: Any, session: Any, envelope: Any) -> str:
        (rcpt,) = envelope.rcpt_tos
        seen[rcpt] += 1
        if len(gates) < 2 and rcpt not in gates:
            gates[rcpt] = asyncio.Event()
            await gates[rcpt].wait()
        elif rcpt in slow and seen[rcpt] == 1:
            await asyncio.sleep(2.0)  # long enough for a second start, were one made
        return "250 2.0.0 OK"

    monkeypatch.setattr(handler, "handle_DATA", data)
    message_id = plan_send(database, runtime, sink.port, to=addresses[:1], bcc=addresses[1:])
    worker = runtime.make_outbox_worker(poll_seconds=0.05, concurrency=2)
    await worker.start()
    try:
        for _ in range(500):
            if len(gates) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(gates) == 2
        reserved = reserved_by(database, worker.worker_id)
        assert len(reserved) == 8
        slow.append(reserved[-1])
        drop_presence_session(database, worker)
        assert await runtime.make_outbox_worker().recover_orphans() == 2
        assert reserved_by(database, worker.worker_id) == []
        first, second = gates.values()
        first.set()
        await asyncio.sleep(0.5)
        second.set()
        await settled(database, message_id, lambda c: c.status != CopyStatus.SENT)
        with database.engine.begin() as conn:
            # Taken again when the worker found its marker gone (its repair).
            assert not queue.presence_lock_is_free(conn, worker.worker_id)
    finally:
        await worker.stop()
    assert seen == dict.fromkeys(addresses, 1)
    by_address = copies(database, message_id)
    assert {(c.status, c.attempts) for c in by_address.values()} == {(CopyStatus.SENT, 1)}
    assert crash_markers(database) == {worker.worker_id}


async def test_a_copy_queued_again_while_its_old_reservation_waits_is_sent_once(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A live worker is taken for dead: on SQLite its lock file is gone, on PostgreSQL
    # its lock's session and its crash marker (a crash of the server). Its copies,
    # reserved ones too, become unknown, and the user queues the last reserved one
    # again. The worker, one lane still busy, still holds that copy in its reserve and
    # reserves it anew while the old entry waits: the copy must go out once.
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.mail import repository

    handler: SinkHandler = sink.handler
    addresses = [f"r{n:02d}@example.org" for n in range(1, 11)]
    seen: Counter[str] = Counter()
    gates: dict[str, asyncio.Event] = {}
    retried: list[str] = []

    async def data(server: Any, session: Any, envelope: Any) -> str:
        (rcpt,) = envelope.rcpt_tos
        seen[rcpt] += 1
        if len(gates) < 2 and rcpt not in gates:
            gates[rcpt] = asyncio.Event()
            await gates[rcpt].wait()
        elif rcpt in retried and seen[rcpt] == 1:
            # The other lane frees up while this transaction goes on.
            _, second = gates.values()
            second.set()
            await asyncio.sleep(1.0)
        return "250 2.0.0 OK"

    monkeypatch.setattr(handler, "handle_DATA", data)
    message_id = plan_send(database, runtime, sink.port, to=addresses[:1], bcc=addresses[1:])
    worker = runtime.make_outbox_worker(poll_seconds=0.05, concurrency=2)
    await worker.start()
    try:
        for _ in range(500):
            if len(gates) == 2:
                break
            await asyncio.sleep(0.01)
        assert len(gates) == 2
        reserved = reserved_by(database, worker.worker_id)
        assert len(reserved) == 8
        if database.is_sqlite:
            worker.presence._lock_path(worker.worker_id).unlink()
        else:
            drop_presence_session(database, worker)
            with database.engine.begin() as conn:
                conn.execute(text("DELETE FROM outbox_crash_markers"))
        assert await runtime.make_outbox_worker().recover_orphans() == 10
        target = copies(database, message_id)[reserved[-1]]
        with database.unit_of_work() as s:
            assert repository.requeue_unknown_copy(s, target.id, utcnow(), "queued again")
            repository.reopen_outbox_entry(s, message_id, utcnow())
        retried.append(target.address)
        first, _ = gates.values()
        first.set()
        await settled(
            database,
            message_id,
            lambda c: (
                c.status not in (CopyStatus.SENT, CopyStatus.UNKNOWN)
                or (c.address in gates and c.status != CopyStatus.SENT)
            ),
        )
    finally:
        await worker.stop()
    sent = {*gates, target.address}
    assert seen == dict.fromkeys(sent, 1)
    by_address = copies(database, message_id)
    assert {a for a, c in by_address.items() if c.status == CopyStatus.SENT} == sent
    assert by_address[target.address].attempts == 1


async def test_the_worker_started_in_the_background_sends_new_email(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    worker = runtime.make_outbox_worker(poll_seconds=0.05)
    await worker.start()
    try:
        message_id = plan_send(database, runtime, sink.port)
        worker.wake()
        for _ in range(200):
            if copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT:
                break
            await asyncio.sleep(0.02)
    finally:
        await worker.stop()
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT
    assert len(sink.handler.accepted) == 1


async def test_stopping_mid_transaction_marks_the_copy_unknown(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mailbeacon.mail.tasks as tasks

    monkeypatch.setattr(tasks, "STOP_GRACE_SECONDS", 0.2)
    handler: SinkHandler = sink.handler
    handler.stall = True
    message_id = plan_send(database, runtime, sink.port)
    worker = runtime.make_outbox_worker(poll_seconds=0.05)
    await worker.start()
    await asyncio.wait_for(handler.stalled.wait(), 10)
    await worker.stop()
    copy = copies(database, message_id)["ann@example.org"]
    assert copy.status == CopyStatus.UNKNOWN
    assert copy.smtp_reply == "the worker stopped during the SMTP transaction"


async def test_claims_whose_round_failed_are_put_back_and_sent(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On PostgreSQL a round's claims are committed by its one statement; the send
    # contexts are read after it. When that read fails the worker never starts
    # the copies, and must not leave them in `sending` (they would turn unknown).
    message_id = plan_send(
        database, runtime, sink.port, to=["ann@example.org"], bcc=["bob@example.org"]
    )
    real_contexts = queue.SendQueue.contexts
    failures = [True]

    def failing_contexts(queue: queue.SendQueue, ids: Any) -> Any:
        ids = set(ids)
        if ids and failures:
            failures.pop()
            raise OperationalError("SELECT ...", {}, Exception("the connection was lost"))
        return real_contexts(queue, ids)

    monkeypatch.setattr(queue.SendQueue, "contexts", failing_contexts)
    worker = runtime.make_outbox_worker()
    with pytest.raises(SQLAlchemyError):
        await worker.run_once()
    assert await worker.run_once() == 2
    by_address = copies(database, message_id)
    assert {c.status for c in by_address.values()} == {CopyStatus.SENT}
    assert {c.attempts for c in by_address.values()} == {1}
    assert Counter(r for rec in sink.handler.accepted for r in rec.rcpt_tos) == {
        "ann@example.org": 1,
        "bob@example.org": 1,
    }


async def test_wake_from_another_thread_is_safe_and_prompt(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # Sync request handlers run in the threadpool and wake the worker from there.
    # Debug mode makes the loop refuse calls from the wrong thread.
    asyncio.get_running_loop().set_debug(True)
    worker = runtime.make_outbox_worker(poll_seconds=30)
    await worker.start()
    try:
        for _ in range(200):  # until the worker waits for a wake-up
            if worker._wake._waiters:  # type: ignore[attr-defined]
                break
            await asyncio.sleep(0.01)
        message_id = plan_send(database, runtime, sink.port)
        await asyncio.to_thread(worker.wake)
        for _ in range(250):
            if copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT:
                break
            await asyncio.sleep(0.02)
    finally:
        # A wake-up set from the wrong thread can leave the loop's waiter stuck.
        await asyncio.wait_for(worker.stop(), 20)
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT


async def test_a_round_whose_plans_fail_after_it_committed_leaves_no_copy_stuck(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # Reading a stored setting fails after the round committed its claims and
    # reservations (not a database error): the worker must not keep those copies
    # under its id, reserved or sending, untracked for as long as it lives.
    from mailbeacon.models import MailboxConnection

    addresses = [f"r{n}@example.org" for n in range(1, 7)]
    message_id = plan_send(database, runtime, sink.port, to=addresses[:1], bcc=addresses[1:])

    def set_security(value: str) -> None:
        with database.engine.begin() as conn:
            conn.execute(update(MailboxConnection).values(smtp_security=value))

    set_security("bogus")
    worker = runtime.make_outbox_worker(concurrency=2)
    with pytest.raises(ValueError, match="bogus"):
        await worker.run_once()
    assert worker._claims_in_doubt
    set_security("none")
    assert await worker.run_once() == len(addresses)
    by_address = copies(database, message_id)
    assert {(c.status, c.attempts) for c in by_address.values()} == {(CopyStatus.SENT, 1)}
    assert Counter(r for rec in sink.handler.accepted for r in rec.rcpt_tos) == dict.fromkeys(
        addresses, 1
    )


async def test_a_pass_that_cannot_end_says_so(
    database: Database,
    runtime: Runtime,
    sink: SmtpPeer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan_send(database, runtime, sink.port, to=["ann@example.org"])
    worker = runtime.make_outbox_worker()
    end_pass = worker._end_pass

    def lost(touched: set[int]) -> None:
        end_pass(touched)  # committed, and its answer lost
        raise OperationalError("COMMIT", {}, Exception("the connection was lost"))

    monkeypatch.setattr(worker, "_end_pass", lost)
    with caplog.at_level("WARNING", logger="mailbeacon.mail.tasks"):
        assert await worker.run_once() == 1
    assert any("could not end its pass" in r.getMessage() for r in caplog.records)


async def test_stopping_writes_again_and_flushes_outcomes_a_crash_took(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server crashes after the pass's last round (whose commit did not wait) and
    # before the pass ends; the worker is stopped before its poll loop runs another
    # pass. Stopping writes ann's outcome again and makes it durable: ann does not
    # stay `sending`, to become unknown.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's crash marker (on SQLite the machine takes the worker)")
    message_id = plan_send(database, runtime, sink.port, to=["ann@example.org"])
    worker = runtime.make_outbox_worker(concurrency=1)
    end_pass = worker._end_pass

    def crash_then_end_pass(touched: set[int]) -> None:
        lose_recent_commits(
            database, message_id, **{"ann@example.org": {"status": CopyStatus.SENDING}}
        )
        end_pass(touched)

    monkeypatch.setattr(worker, "_end_pass", crash_then_end_pass)
    assert await worker.run_once() == 1
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENDING
    assert worker._unsynced
    monkeypatch.setattr(worker, "_end_pass", end_pass)
    await worker.stop()
    assert not worker._unsynced
    ann = copies(database, message_id)["ann@example.org"]
    assert (ann.status, ann.attempts) == (CopyStatus.SENT, 1)
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["ann@example.org"]]
    assert crash_markers(database) == {worker.worker_id}
    with database.sessions() as s:
        entry = s.scalars(select(OutboxEntry).where(OutboxEntry.message_id == message_id)).one()
        assert entry.completed_at is not None


async def test_a_worker_takes_its_lock_again_while_a_recovery_probes_it(
    database: Database, runtime: Runtime
) -> None:
    # Another worker's recovery probes the lock with a transaction-level try-lock and
    # holds it until its transaction ends: a worker taking its lost lock again at that
    # moment waits a little, rather than going on without it.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's presence lock (on SQLite a flock the process holds)")
    worker = runtime.make_outbox_worker()
    worker.presence.acquire()
    try:
        drop_presence_session(database, worker)
        with database.engine.connect() as probe:
            probe.begin()
            assert queue.presence_lock_is_free(probe, worker.worker_id)
            check = asyncio.create_task(asyncio.to_thread(worker.presence.check))
            await asyncio.sleep(0.4)
            assert not check.done()
            probe.rollback()
        await asyncio.wait_for(check, 5)
        assert worker.presence.held
        with database.engine.begin() as conn:
            assert not queue.presence_lock_is_free(conn, worker.worker_id)
    finally:
        worker.presence.release()


async def test_a_worker_without_its_lock_claims_nothing_new(
    database: Database, runtime: Runtime, sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its lost lock is still held elsewhere (the server has not yet dropped the old
    # session): others may take the worker for dead, so it claims nothing until it has
    # the lock again, and then sends each copy once.
    if database.is_sqlite:
        pytest.skip("PostgreSQL's presence lock (on SQLite a flock the process holds)")
    from mailbeacon.mail import tasks

    monkeypatch.setattr(tasks, "RETAKE_LOCK_SECONDS", 0.5)
    message_id = plan_send(
        database, runtime, sink.port, to=["ann@example.org"], bcc=["bob@example.org"]
    )
    worker = runtime.make_outbox_worker()
    worker.presence.acquire()
    try:
        drop_presence_session(database, worker)
        with database.engine.connect() as other:
            assert queue.hold_presence_lock(other, worker.worker_id)
            other.commit()
            with pytest.raises(RuntimeError, match="another live worker"):
                await asyncio.to_thread(worker.presence.check)
            assert not worker.presence.held
            assert await worker._drain() == 0
            assert not worker.presence.held
            by_address = copies(database, message_id)
            assert {(c.status, c.claimed_by) for c in by_address.values()} == {
                (CopyStatus.QUEUED, None)
            }
            other.invalidate()  # its session goes, and the lock with it
        assert await worker._drain() == 2
        assert worker.presence.held
    finally:
        worker.presence.release()
    by_address = copies(database, message_id)
    assert {(c.status, c.attempts) for c in by_address.values()} == {(CopyStatus.SENT, 1)}
    assert Counter(r for rec in sink.handler.accepted for r in rec.rcpt_tos) == {
        "ann@example.org": 1,
        "bob@example.org": 1,
    }


async def test_a_copy_given_back_untried_is_begun_when_claimed_in_the_same_round(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # A worker stopped before sending ann gives her copy back at its next pass; on
    # SQLite the round that writes that may claim her again at once (on PostgreSQL the
    # next one does). The claim is a new attempt: a lane must begin it, or the copy
    # would stay `sending` under a live worker until its lease runs out.
    from mailbeacon.kit.clock import utcnow

    message_id = plan_send(database, runtime, sink.port, to=["ann@example.org"])
    worker = runtime.make_outbox_worker(concurrency=1)
    worker._recovered_own = True  # the claim below is this process's own
    with worker._connect() as conn, conn.begin():
        (ann,) = queue.claim_copies(conn, worker.worker_id, utcnow(), 1)
    worker._held.add(ann.id)
    worker._abandoned.append(
        queue.Settlement(
            ann.id,
            message_id,
            CopyStatus.QUEUED,
            "the worker stopped before sending",
            next_attempt_at=utcnow(),
            release=True,
        )
    )
    await worker.run_once()
    ann_now = copies(database, message_id)["ann@example.org"]
    assert (ann_now.status, ann_now.attempts) == (CopyStatus.SENT, 1)
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["ann@example.org"]]


async def test_a_rounds_naive_time_is_utc_whatever_the_sessions_time_zone(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # The round binds its times as the models' UTCDateTime does: a naive value is UTC,
    # not the database session's time zone (PostgreSQL's round runs on the driver's
    # connection, outside SQLAlchemy's type handling).
    message_id = plan_send(database, runtime, sink.port, to=["ann@example.org"])
    # Ahead of the clock, so the copy planned just now is due whatever day the suite runs.
    naive = datetime.now(UTC).replace(tzinfo=None, microsecond=0) + timedelta(hours=1)
    with database.engine.connect() as conn:
        if not database.is_sqlite:
            conn.exec_driver_sql("SET TimeZone = 'America/New_York'")
            conn.commit()
        send = queue.SendQueue(conn)
        (ann,) = send.round(
            "w1", naive, [], 1, messages_started=set(), known_messages=(), establish=True
        ).claimed
        sent = queue.Settlement(ann.id, message_id, CopyStatus.SENT, "250 OK")
        send.round("w1", naive, [sent], 0, messages_started=set(), known_messages=())
    stored = copies(database, message_id)["ann@example.org"].sent_at
    assert stored is not None
    assert stored.astimezone(UTC) == naive.replace(tzinfo=UTC)
