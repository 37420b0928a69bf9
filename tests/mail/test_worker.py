"""The outbox worker end to end: real database, real aiosmtpd server, real tokens."""

from __future__ import annotations

import asyncio
import email
import email.policy
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
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
    # On SQLite the worker reserves bob and carl with ann's claim, then starts bob
    # and settles ann in a commit that does not wait for the disk; killed while bob's
    # DATA is unanswered, it leaves ann sent, bob in doubt and carl still reserved.
    handler: SinkHandler = sink.handler
    answer = handler.handle_DATA

    async def stall_bob(server: Any, session: Any, envelope: Any) -> str:
        handler.stall = envelope.rcpt_tos == ["bob@example.org"]
        return await answer(server, session, envelope)

    monkeypatch.setattr(handler, "handle_DATA", stall_bob)
    message_id = plan_send(
        database,
        runtime,
        sink.port,
        to=["ann@example.org"],
        bcc=["bob@example.org", "carl@example.org"],
    )
    await kill_worker_process_when_stalled(runtime, handler)
    by_address = copies(database, message_id)
    assert by_address["ann@example.org"].status == CopyStatus.SENT
    assert by_address["bob@example.org"].status == CopyStatus.SENDING
    carl = by_address["carl@example.org"]
    assert carl.status == CopyStatus.QUEUED and carl.attempts == 0
    assert (carl.claimed_by is not None) == database.is_sqlite

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
    # A reservation's start may have been committed without waiting for the disk
    # (SQLite). Only a worker known to have died in this boot of the machine lost
    # no commit; on PostgreSQL no worker is vouched for, and nothing is reserved.
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
    worker = runtime.make_outbox_worker()
    back = database.is_sqlite and died_in == "this boot" and machine_boot_id() is not None
    assert await worker.recover_orphans() == (0 if back else 2)
    assert await worker.run_once() == (2 if back else 0)
    statuses = {c.status for c in copies(database, message_id).values()}
    assert statuses == {CopyStatus.SENT if back else CopyStatus.UNKNOWN}
    assert len(sink.handler.accepted) == (2 if back else 0)


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
