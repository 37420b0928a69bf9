"""The sender's one copy in the Sent folder: real SMTP (aiosmtpd), real IMAP (Dovecot).

Each test sends through the outbox worker to a sink on loopback, then lets the
sync worker save the Sent copy to the test user's own Dovecot mailbox, and
reads the folder back with plain imapclient.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import time
from email.message import EmailMessage

import imapclient
import pytest
from sqlalchemy import select, update

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    CopyStatus,
    MailboxConnection,
    Message,
    RecipientCopy,
    SentCopyStatus,
    SentFolderCopy,
)
from mailbeacon.runtime import Runtime
from mailbeacon.sync.imap import open_mailbox
from mailbeacon.sync.sent_folder import put_sent_copy
from tests.mail.conftest import SinkHandler, SmtpPeer
from tests.sync.conftest import settings_for
from tests.sync.dovecot import Account, DovecotServer
from tests.sync.harness import (
    make_imap_sender,
    send_planned,
    smtp_sink,
    sync_runtime,
    sync_settings,
    worker,
)

__all__ = ["smtp_sink", "sync_runtime", "sync_settings"]

pytestmark = pytest.mark.asyncio

HTML = (
    '<p>Hello,</p><p>here is <a href="https://example.com/pricing?plan=team">our pricing</a> '
    'and <a href="https://example.com/terms">the terms</a>.</p>'
)


def folder_messages(
    server: DovecotServer, account: Account, folder: str
) -> list[tuple[frozenset[bytes], EmailMessage, bytes]]:
    """Every message in ``folder``: its flags, parsed, and its octets."""
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10)
    try:
        client.login(account.username, account.password)
        client.select_folder(folder, readonly=True)
        uids = client.search("ALL")
        found = client.fetch(uids, ["FLAGS", "BODY.PEEK[]"]) if uids else {}
    finally:
        client.logout()
    out = []
    for uid in sorted(found):
        raw = found[uid][b"BODY[]"]
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        out.append((frozenset(found[uid][b"FLAGS"]), msg, raw))
    return out


def append_to(server: DovecotServer, account: Account, folder: str, *raws: bytes) -> None:
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False, timeout=10)
    try:
        client.login(account.username, account.password)
        for raw in raws:
            client.append(folder, raw)
    finally:
        client.logout()


def sent_copy_row(database: Database, message_id: int) -> SentFolderCopy:
    with database.sessions() as s:
        return s.scalars(
            select(SentFolderCopy).where(SentFolderCopy.message_id == message_id)
        ).one()


async def send(database: Database, runtime: Runtime, user_id: int, **fields: object) -> int:
    message_id = send_planned(database, runtime, user_id, **fields)
    await runtime.make_outbox_worker().run_once()
    return message_id


async def test_the_sent_folder_gets_one_copy_without_pixel_with_its_links_and_the_bcc(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account, smtp_port=smtp_sink.port)
    message_id = await send(
        database,
        sync_runtime,
        user,
        to=["Ann <ann@example.org>"],
        cc=["carl@example.org"],
        bcc=["dora@example.org"],
        subject="Our pricing",
        body_html=HTML,
    )
    # Closing the send request queued the Sent copy in the same transaction.
    assert sent_copy_row(database, message_id).status == SentCopyStatus.PENDING
    stats = await worker(sync_runtime).run_once()
    assert stats.sent_copies == 1

    [(flags, copy, raw)] = folder_messages(dovecot, account, "Sent")
    with database.sessions() as s:
        message = s.get_one(Message, message_id)
    assert b"\\Seen" in flags
    assert copy["Message-ID"] == message.message_id_header
    assert (copy["To"], copy["Cc"], copy["Subject"]) == (
        "Ann <ann@example.org>",
        "carl@example.org",
        "Our pricing",
    )
    assert copy["Bcc"] == "dora@example.org"
    html = copy.get_body(("html",)).get_content()  # type: ignore[union-attr]
    text = copy.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "/t/" not in html and "/t/" not in text and b"mb.test/t/" not in raw
    assert 'href="https://example.com/pricing?plan=team"' in html
    assert "https://example.com/terms" in text
    # What the recipients got is tracked, and none of it names the Bcc recipient.
    handler: SinkHandler = smtp_sink.handler
    assert len(handler.accepted) == 3
    for delivered in handler.accepted:
        parsed = email.message_from_bytes(delivered.data, policy=email.policy.default)
        assert (
            parsed["Bcc"] is None
            and b"dora@example.org" not in delivered.data.split(b"\r\n\r\n")[0]
        )
        assert "/t/o/" in parsed.get_body(("html",)).get_content()  # type: ignore[union-attr]
    row = sent_copy_row(database, message_id)
    assert (row.status, row.folder, row.replaced_count) == (SentCopyStatus.DONE, "Sent", 0)
    # A later pass finds nothing more to do.
    assert (await worker(sync_runtime).run_once()).sent_copies == 0
    assert len(folder_messages(dovecot, account, "Sent")) == 1


async def test_tracked_copies_the_provider_saved_are_replaced_by_the_clean_one(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account, smtp_port=smtp_sink.port)
    message_id = await send(
        database, sync_runtime, user, to=["ann@example.org", "bob@example.org"], body_html=HTML
    )
    # What Gmail does: every copy submitted over SMTP, pixel included, lands in Sent.
    handler: SinkHandler = smtp_sink.handler
    append_to(dovecot, account, "Sent", *(r.data for r in handler.accepted))
    unrelated = (
        b"From: a@example.org\r\nSubject: kept\r\nMessage-ID: <other@example.org>\r\n\r\nx\r\n"
    )
    append_to(dovecot, account, "Sent", unrelated)
    assert len(folder_messages(dovecot, account, "Sent")) == 3

    await worker(sync_runtime).run_once()
    found = folder_messages(dovecot, account, "Sent")
    assert sorted(m["Subject"] for _, m, _ in found) == ["Hello", "kept"]
    [raw] = [raw for _, m, raw in found if m["Subject"] == "Hello"]
    assert b"/t/" not in raw
    assert sent_copy_row(database, message_id).replaced_count == 2


async def test_provider_copies_stay_when_the_mailbox_says_so(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    user = make_imap_sender(
        database,
        sync_runtime,
        dovecot,
        account,
        smtp_port=smtp_sink.port,
        replace_provider_copies=False,
    )
    await send(database, sync_runtime, user, to=["ann@example.org"], body_html=HTML)
    handler: SinkHandler = smtp_sink.handler
    append_to(dovecot, account, "Sent", handler.accepted[0].data)
    await worker(sync_runtime).run_once()
    tracked = [raw for _, _, raw in folder_messages(dovecot, account, "Sent") if b"/t/" in raw]
    assert len(folder_messages(dovecot, account, "Sent")) == 2 and len(tracked) == 1


async def test_saving_again_after_a_lost_outcome_leaves_one_copy(
    dovecot: DovecotServer, account: Account
) -> None:
    raw = (
        b"From: s@example.com\r\nTo: a@example.org\r\nSubject: Hi\r\n"
        b"Message-ID: <once-only@example.com>\r\n\r\nHello\r\n"
    )
    with open_mailbox(settings_for(dovecot, account)) as mailbox:
        first = put_sent_copy(mailbox, raw, "<once-only@example.com>")
        # The worker crashed before writing down that it was done: it tries again.
        second = put_sent_copy(mailbox, raw, "<once-only@example.com>")
    assert (first.appended, second.appended) == (True, False)
    assert first.folder == "Sent"
    assert len(folder_messages(dovecot, account, "Sent")) == 1


async def test_a_failed_save_never_fails_the_send_is_shown_and_retried(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    user = make_imap_sender(
        database,
        sync_runtime,
        dovecot,
        account,
        smtp_port=smtp_sink.port,
        imap_port=closed_port,
    )
    message_id = await send(database, sync_runtime, user, to=["ann@example.org"], body_html=HTML)
    with database.sessions() as s:
        statuses = s.scalars(
            select(RecipientCopy.status).where(RecipientCopy.message_id == message_id)
        ).all()
    assert statuses == [CopyStatus.SENT]

    await worker(sync_runtime).run_once()
    row = sent_copy_row(database, message_id)
    assert row.status == SentCopyStatus.PENDING and row.attempts == 1
    assert "Could not connect" in row.last_error
    assert row.next_attempt_at is not None and row.next_attempt_at > utcnow()
    # Not due yet: a second pass leaves it alone (no tight loop).
    await worker(sync_runtime).run_once()
    assert sent_copy_row(database, message_id).attempts == 1

    # The server is back and the back-off over: it is saved.
    with database.unit_of_work() as s:
        s.execute(update(MailboxConnection).values(imap_port=dovecot.imap_port))
        s.execute(update(SentFolderCopy).values(next_attempt_at=utcnow()))
    await worker(sync_runtime).run_once()
    row = sent_copy_row(database, message_id)
    assert (row.status, row.attempts, row.last_error) == (SentCopyStatus.DONE, 2, "")
    assert len(folder_messages(dovecot, account, "Sent")) == 1


async def test_a_save_that_keeps_failing_is_given_up_after_the_last_attempt(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    user = make_imap_sender(
        database, sync_runtime, dovecot, account, smtp_port=smtp_sink.port, password="wrong"
    )
    message_id = await send(database, sync_runtime, user, to=["ann@example.org"])
    with database.unit_of_work() as s:
        s.execute(update(SentFolderCopy).values(attempts=9))  # SENT_COPY_MAX_ATTEMPTS is 10
    await worker(sync_runtime).run_once()
    row = sent_copy_row(database, message_id)
    assert row.status == SentCopyStatus.FAILED
    assert row.last_error.endswith("refused the user name or password.")


async def test_a_delivered_message_wakes_the_sync_worker_at_once(
    database: Database,
    sync_runtime: Runtime,
    smtp_sink: SmtpPeer,
    dovecot: DovecotServer,
    account: Account,
) -> None:
    user = make_imap_sender(database, sync_runtime, dovecot, account, smtp_port=smtp_sink.port)
    # A worker that would look again only in a minute, were it not woken.
    sync = worker(sync_runtime, poll_seconds=60.0)
    sync_runtime.sync = sync
    await sync.start()
    try:
        await asyncio.sleep(0.5)  # its first pass is over: it now waits
        message_id = await send(database, sync_runtime, user, to=["ann@example.org"])
        deadline = time.monotonic() + 10
        while sent_copy_row(database, message_id).status != SentCopyStatus.DONE:
            assert time.monotonic() < deadline, "the Sent copy waited for the next poll"
            await asyncio.sleep(0.05)
    finally:
        sync_runtime.sync = None
        await sync.stop()
    assert len(folder_messages(dovecot, account, "Sent")) == 1
