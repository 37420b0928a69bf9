"""The sync worker against a real Dovecot: first sync, going forward, IDLE, renumbered
folders, restarts, two workers, and a mailbox that is down or refuses the password."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import imapclient
import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mailbeacon.accounts.security import hash_password
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    CopyStatus,
    MailboxConnection,
    Message,
    ReceivedKind,
    SyncState,
    User,
)
from mailbeacon.notify.replies import ReplyNotifier
from mailbeacon.runtime import Runtime
from mailbeacon.sync.events import ReceivedStored
from mailbeacon.sync.receiving import Receiver
from tests.client import make_client, sign_in
from tests.factories.accounts import PASSWORD
from tests.factories.mail import send_mail
from tests.mail.conftest import SmtpPeer
from tests.sync.dovecot import Account, DovecotServer, append_messages
from tests.sync.harness import (
    copies,
    first_sync_done,
    make_imap_sender,
    mark_sent,
    received,
    reply_bytes,
    send_planned,
    smtp_sink,
    sync_runtime,
    sync_settings,
    sync_state,
    worker,
)
from tests.sync.test_receiving import AUTO_REPLIES, BOUNCES, SAMPLES

__all__ = ["smtp_sink", "sync_runtime", "sync_settings"]

pytestmark = pytest.mark.asyncio


def header_of(database: Database, message_id: int) -> str:
    with database.sessions() as s:
        return s.get_one(Message, message_id).message_id_header


def replies_to(header: str, count: int, sender: str = "carla@example.org") -> list[bytes]:
    return [
        reply_bytes(
            sender=sender,
            to="sally@example.com",
            subject="Re: Our offer",
            in_reply_to=header,
            message_id=f"<reply-{n}-{time.monotonic_ns()}@example.org>",
            text=f"Reply number {n}.",
        )
        for n in range(count)
    ]


def others(count: int) -> list[bytes]:
    """Mail that has nothing to do with anything sent (newsletters, colleagues)."""
    return [
        (
            f"From: Someone {n} <someone{n}@example.net>\r\nTo: sally@example.com\r\n"
            f"Subject: Newsletter {n}\r\nDate: Tue, 05 Mar 2024 10:15:00 +0100\r\n"
            f"Message-ID: <news-{n}-{time.monotonic_ns()}@example.net>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "This week's offers.\r\n"
        ).encode()
        for n in range(count)
    ]


def renumber_inbox(account: Account) -> None:
    """What a server restored from backup does: INBOX gets a new UIDVALIDITY and new UIDs.

    Dovecot keeps UIDs in dovecot-uidlist and its indexes; without them it numbers the
    folder afresh under a new UIDVALIDITY (the next value from dovecot-uidvalidity).
    """
    time.sleep(1.1)  # Dovecot's UIDVALIDITY is time-based
    (account.maildir / "dovecot-uidlist").unlink()
    for path in account.maildir.iterdir():
        if path.name.startswith("dovecot.index"):
            path.unlink()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_the_first_sync_reads_the_last_days_and_keeps_only_what_answers_our_email(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    header = header_of(database, sent.message_id)
    old = utcnow() - dt.timedelta(days=45)
    old_reply = replies_to(header, 1, sender="carla@example.org")[0].replace(
        b"Reply number 0", b"An old reply"
    )
    append_messages(dovecot, account, "INBOX", [*others(5), *replies_to(header, 2)])
    append_at(dovecot, account, old_reply, old)

    stats = await worker(sync_runtime).run_once()
    assert (stats.sessions, stats.headers, stats.stored, stats.failures) == (1, 7, 2, 0)
    # Only mail that may answer ours is read whole: the two replies.
    assert stats.fetched == 2
    state = sync_state(database)
    assert state.first_sync_done and state.last_uid == 8 and state.last_error == ""
    assert state.last_success_at is not None
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 2
    assert {r.new_text for r in received(database)} == {"Reply number 0.", "Reply number 1."}

    # Then forward from the last UID: only what is new is read.
    append_messages(dovecot, account, "INBOX", [*replies_to(header, 1), *others(1)])
    with database.unit_of_work() as s:
        s.execute(update(SyncState).values(next_attempt_at=utcnow()))
    stats = await worker(sync_runtime).run_once()
    assert (stats.headers, stats.stored) == (2, 1)
    assert sync_state(database).last_uid == 10


def append_at(server: DovecotServer, account: Account, raw: bytes, when: dt.datetime) -> None:
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10)
    try:
        client.login(account.username, account.password)
        client.append("INBOX", raw, msg_time=when)
    finally:
        client.logout()


SAMPLE_CASES = [("auto_reply", name) for name in sorted(AUTO_REPLIES)] + [
    ("bounce", name) for name in sorted(BOUNCES)
]


@pytest.mark.parametrize(("kind", "sample"), SAMPLE_CASES)
async def test_real_automatic_replies_and_bounces_go_through_imap_to_the_copy(
    database: Database,
    sync_runtime: Runtime,
    dovecot: DovecotServer,
    account: Account,
    kind: str,
    sample: str,
) -> None:
    if kind == "auto_reply":
        address, subject, how = AUTO_REPLIES[sample]
        returned = (
            "<25203A4E-F90F-4A14-BF51-3E7B9D39BE8E@libsisimai.org>" if how == "message-id" else None
        )
    else:
        address, returned, _code = BOUNCES[sample]
        subject = "Our offer"
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, (address,), subject=subject)
    if returned is not None:
        mark_sent(database, sent.message_id, returned)
    append_messages(dovecot, account, "INBOX", [(SAMPLES / kind / sample).read_bytes()])
    stats = await worker(sync_runtime).run_once()
    assert stats.stored == 1
    copy = copies(database, sent.message_id)[address]
    if kind == "auto_reply":
        assert copy.auto_replied_at is not None and copy.reply_count == 0
        assert copy.status == CopyStatus.SENT
    else:
        assert copy.status == CopyStatus.BOUNCED and copy.bounce_diagnostic


async def test_a_renumbered_inbox_is_read_again_without_storing_anything_twice(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    header = header_of(database, sent.message_id)
    append_messages(dovecot, account, "INBOX", [*replies_to(header, 2), *others(2)])
    await worker(sync_runtime).run_once()
    before = sync_state(database)
    renumber_inbox(account)
    append_messages(dovecot, account, "INBOX", replies_to(header, 1))
    with database.unit_of_work() as s:
        s.execute(update(SyncState).values(next_attempt_at=utcnow()))

    stats = await worker(sync_runtime).run_once()
    after = sync_state(database)
    assert after.uidvalidity != before.uidvalidity and after.first_sync_done
    assert stats.headers == 5  # everything since the first sync's start, read again
    assert stats.stored == 1  # but only the new reply is new
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 3
    assert len(received(database)) == 3


class Crash(BaseException):
    """The process dies (kill -9): nothing after this point runs, no handler catches it."""


class CrashOnBatch:
    """An observer that brings the worker down inside the transaction of its nth batch."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.seen = 0

    def on_received(self, session: Session, events: Sequence[ReceivedStored]) -> None:
        self.seen += 1
        if self.seen == self.batch:
            raise Crash()


async def test_a_restart_in_the_middle_of_a_sync_goes_on_without_duplicates(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    header = header_of(database, sent.message_id)
    # Batches of 4 headers, each with two replies: the third batch dies mid-transaction.
    mail: list[bytes] = []
    for reply, other in zip(replies_to(header, 10), others(10), strict=True):
        mail += [reply, other]
    append_messages(dovecot, account, "INBOX", mail)
    crashing = worker(
        sync_runtime, batch_size=4, receiver=Receiver([ReplyNotifier(), CrashOnBatch(3)])
    )
    with pytest.raises(Crash):
        await crashing.run_once()
    state = sync_state(database)
    assert (state.last_uid, state.first_sync_done) == (8, False)
    assert len(received(database)) == 4
    # A dead process releases nothing: its lease runs out, and then the next one goes on.
    with database.unit_of_work() as s:
        s.execute(update(SyncState).values(lease_owner="dead", lease_until=utcnow()))

    stats = await worker(sync_runtime, batch_size=4).run_once()
    assert (stats.headers, stats.stored) == (12, 6)
    assert len(received(database)) == 10
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 10
    assert sync_state(database).first_sync_done


async def test_two_workers_never_sync_one_mailbox_at_once(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    append_messages(dovecot, account, "INBOX", replies_to(header_of(database, sent.message_id), 3))
    # The first holds the mailbox open (IDLE) until stopped.
    holder = worker(sync_runtime, worker_id="worker-a")
    await holder.start()
    try:
        await wait_for(lambda: len(received(database)) == 3)
        other = worker(sync_runtime, worker_id="worker-b")
        with database.unit_of_work() as s:
            s.execute(update(SyncState).values(next_attempt_at=utcnow()))
        stats = await other.run_once()
        assert (stats.sessions, stats.headers) == (0, 0)
        assert sync_state(database).lease_owner == "worker-a"
    finally:
        await holder.stop()
    assert holder.stats.sessions == 1
    assert sync_state(database).lease_owner is None

    # Racing from a standing start, one of them reads; the other finds the mailbox taken
    # or already read.
    append_messages(dovecot, account, "INBOX", replies_to(header_of(database, sent.message_id), 2))
    with database.unit_of_work() as s:
        s.execute(update(SyncState).values(next_attempt_at=utcnow()))
    first, second = await asyncio.gather(
        worker(sync_runtime, worker_id="worker-c").run_once(),
        worker(sync_runtime, worker_id="worker-d").run_once(),
    )
    assert first.sessions + second.sessions == 1
    assert first.stored + second.stored == 2
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 5


async def wait_for(condition: object, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not await asyncio.to_thread(condition):  # type: ignore[arg-type]
        assert time.monotonic() < deadline, "the condition never became true"
        await asyncio.sleep(0.05)


async def test_an_idle_session_stores_a_reply_as_it_arrives(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    sync = worker(sync_runtime, idle_slice_seconds=5.0)
    await sync.start()
    try:
        await wait_for(lambda: first_sync_done(database))
        started = time.monotonic()
        append_messages(
            dovecot, account, "INBOX", replies_to(header_of(database, sent.message_id), 1)
        )
        await wait_for(lambda: len(received(database)) == 1)
        # Woken by IDLE, well before the 5-second slice ended, and in the same session.
        assert time.monotonic() - started < 4.0
        assert sync.stats.sessions == 1
    finally:
        await sync.stop()


async def test_imap_down_is_explained_backed_off_and_never_stops_sending(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    port = closed_port()
    user = make_imap_sender(
        database, sync_runtime, dovecot, account, smtp_port=smtp_sink.port, imap_port=port
    )
    stats = await worker(sync_runtime).run_once()
    assert stats.failures == 1
    state = sync_state(database)
    assert state.last_error == (
        f"Could not connect to 127.0.0.1:{port}: nothing answered, or the connection was refused."
    )
    assert state.failures == 1 and state.last_success_at is None
    wait = (state.next_attempt_at - utcnow()).total_seconds()  # type: ignore[operator]
    assert 20 < wait <= 33  # SYNC_BACKOFF_SECONDS=30, jitter 10%
    # Not due: further passes do not try again (no tight loop).
    for _ in range(3):
        assert (await worker(sync_runtime).run_once()).sessions == 0
    # Sending does not depend on it.
    message_id = send_planned(database, sync_runtime, user, to=["ann@example.org"])
    assert await sync_runtime.make_outbox_worker().run_once() == 1
    assert copies(database, message_id)["ann@example.org"].status == CopyStatus.SENT
    # The next failure waits twice as long.
    with database.unit_of_work() as s:
        s.execute(update(SyncState).values(next_attempt_at=utcnow()))
    await worker(sync_runtime).run_once()
    state = sync_state(database)
    assert state.failures == 2
    assert 50 < (state.next_attempt_at - utcnow()).total_seconds() <= 67  # type: ignore[operator]


async def test_a_wrong_password_is_shown_in_settings_and_fixed_by_saving_it(
    database: Database,
    sync_runtime: Runtime,
    dovecot: DovecotServer,
    account: Account,
    tmp_path: Path,
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account, password="not it")
    with database.unit_of_work() as s:
        s.get_one(User, user).password_hash = hash_password(PASSWORD)
    await worker(sync_runtime).run_once()
    state = sync_state(database)
    assert state.last_error == f"127.0.0.1:{dovecot.imap_port} refused the user name or password."

    app = MailbeaconApp(sync_runtime)
    async with make_client(app) as client:
        csrf = await sign_in(client, "sally@example.com")
        page = (await client.get("/settings/email-sync")).text
        assert "Sync is failing:" in page
        assert "refused the user name or password." in page
        assert "Last successful sync: never." in page
        api = (await client.get("/api/mailbox")).json()
        assert api["sync"]["last_error"] == state.last_error
        assert "imap_password" not in api and api["has_imap_password"] is True

        # Saving the right password clears the back-off: the next pass tries at once.
        form = {
            "csrf_token": csrf,
            "imap_form": "1",
            "sender_name": "Sally Seller",
            "sender_address": "sally@example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": "25",
            "smtp_security": "none",
            "imap_host": dovecot.host,
            "imap_port": str(dovecot.imap_port),
            "imap_security": "none",
            "imap_username": account.username,
            "imap_password": account.password,
            "replace_provider_copies": "true",
        }
        r = await client.post("/settings/email-sync", data=form)
        assert r.status_code == 303, r.text
        stats = await worker(sync_runtime).run_once()
        assert (stats.sessions, stats.failures) == (1, 0)
        state = sync_state(database)
        assert state.last_error == "" and state.last_success_at is not None
        page = (await client.get("/settings/email-sync")).text
        assert "Sync is failing" not in page and "last successful sync" in page
    with database.sessions() as s:
        mailbox = s.scalars(select(MailboxConnection)).one()
        assert not mailbox.imap_same_password and mailbox.imap_password_encrypted


@pytest.mark.slow
async def test_a_first_sync_of_ten_thousand_messages(
    database: Database, sync_runtime: Runtime, dovecot: DovecotServer, account: Account
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    header = header_of(database, sent.message_id)
    replies = replies_to(header, 100)
    mail = others(9_900)
    for index, reply in enumerate(replies):
        mail.insert(index * 99, reply)
    append_messages(dovecot, account, "INBOX", mail)
    stats = await worker(sync_runtime).run_once()
    assert (stats.headers, stats.fetched, stats.stored, stats.failures) == (10_000, 100, 100, 0)
    state = sync_state(database)
    assert state.first_sync_done and state.last_uid == 10_000 and state.stored_count == 100
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 100
    kinds = {r.kind for r in received(database)}
    assert kinds == {ReceivedKind.REPLY}
