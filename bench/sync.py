#!/usr/bin/env python3
"""First sync of a mailbox: headers of N messages through our IMAP client, beside plain imapclient.

    .venv/bin/python bench/sync.py [--messages 10000] [--rounds 5] [--batch 500]
                                   [--product-rounds 3] [--database-url URL]

Starts the tests' throwaway Dovecot (tests/sync/dovecot.py; Debian's
dovecot-imapd must be installed), stores N messages of about 1.5 KB in one
user's INBOX with MULTIAPPEND, then times, in alternating order each round:

- ours: ``open_mailbox`` + ``fetch_since("INBOX", 0)``: sign in, SELECT, UID
  SEARCH for the new UIDs, then one UID FETCH of header, INTERNALDATE and FLAGS
  per batch, each message turned into a ``FetchedMessage``;
- reference: plain IMAPClient on the same server: sign in, SELECT, SEARCH ALL,
  then a single FETCH of the same items for every UID at once.

Both over plain IMAP on loopback, each round on fresh connections. Prints the
medians of messages/s and of the per-round ratios; the target for the product
is at least 0.5x the reference.

Then the product itself, ``SyncWorker.run_once()`` with the database (embedded
SQLite in a temporary folder unless ``--database-url`` names a migrated
PostgreSQL), each round from a fresh sync state:

- first sync: a user who sent none of the mail answered there. Everything a
  first sync does: lease, SELECT, SEARCH SINCE, headers in batches, screening
  each batch against the user's sent email (two queries per batch), progress
  committed along the way. Beside the plain imapclient fetch of the same headers;
- replies matched: a user who sent the N emails all these messages answer
  (``<sent-n@mb.test>`` to buyer n). Every message is then read whole,
  classified, matched, stored with its reply text and counted on its copy,
  notified, in one transaction per batch. Replies stored per second, beside a
  plain imapclient fetch of the same whole messages.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import imapclient  # noqa: E402
from sqlalchemy import delete, insert, select, update  # noqa: E402
from tests.sync.dovecot import (  # noqa: E402
    Account,
    DovecotServer,
    append_messages,
    dovecot_missing_reason,
    start_dovecot,
)

from mailbeacon.config import Settings  # noqa: E402
from mailbeacon.db import is_sqlite  # noqa: E402
from mailbeacon.kit.clock import utcnow  # noqa: E402
from mailbeacon.kit.netpolicy import AddressPolicy  # noqa: E402
from mailbeacon.migrate import upgrade  # noqa: E402
from mailbeacon.models import (  # noqa: E402
    CopyStatus,
    MailboxConnection,
    Message,
    Notification,
    ReceivedMail,
    RecipientCopy,
    SyncState,
    User,
)
from mailbeacon.models.mailbox import Security  # noqa: E402
from mailbeacon.runtime import Runtime  # noqa: E402
from mailbeacon.sync.imap import FetchPart, ImapSettings, open_mailbox  # noqa: E402

ITEMS = ["BODY.PEEK[HEADER]", "INTERNALDATE", "FLAGS"]


def message(n: int) -> bytes:
    return (
        f"Return-Path: <buyer{n}@example.org>\r\n"
        f"Received: from mx{n % 7}.example.org (mx.example.org [192.0.2.{n % 250}])\r\n"
        f"\tby mail.mb.test (Postfix) with ESMTPS id {n:012X}\r\n"
        f"\tfor <sam@mb.test>; Tue, 05 Mar 2024 10:15:00 +0100\r\n"
        f"From: Buyer {n} <buyer{n}@example.org>\r\n"
        f"To: Sam Seller <sam@mb.test>\r\n"
        f"Subject: Re: Offer number {n}\r\n"
        f"Date: Tue, 05 Mar 2024 10:15:00 +0100\r\n"
        f"Message-ID: <reply-{n}@example.org>\r\n"
        f"In-Reply-To: <sent-{n}@mb.test>\r\n"
        f"References: <thread-{n}@mb.test> <sent-{n}@mb.test>\r\n"
        f"MIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=utf-8\r\n"
        f"\r\n" + "Thanks, that works for us. Let us talk on Thursday.\r\n" * 15
    ).encode()


def run_ours(server: DovecotServer, account: Account, batch: int) -> tuple[float, int, int]:
    settings = ImapSettings(
        server.host,
        server.imap_port,
        Security.NONE,
        account.username,
        account.password,
        policy=AddressPolicy(allow_loopback=True),  # Dovecot is on this machine
    )
    started = time.perf_counter()
    with open_mailbox(settings) as mailbox:
        count = size = 0
        for messages in mailbox.fetch_since("INBOX", 0, part=FetchPart.HEADERS, batch_size=batch):
            count += len(messages)
            size += sum(len(m.data) for m in messages)
    return time.perf_counter() - started, count, size


def run_reference(server: DovecotServer, account: Account) -> tuple[float, int, int]:
    started = time.perf_counter()
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False)
    client.login(account.username, account.password)
    client.select_folder("INBOX", readonly=True)
    uids = client.search("ALL")
    fetched = client.fetch(uids, ITEMS)
    size = sum(len(item[b"BODY[HEADER]"]) for item in fetched.values())
    client.logout()
    return time.perf_counter() - started, len(fetched), size


# ------------------------------------------------------------------ the product


def _mailbox_user(runtime: Runtime, server: DovecotServer, account: Account, name: str) -> int:
    """A user whose mailbox is the bench account (IMAP on, switched off until measured)."""
    from mailbeacon.models import Organisation

    with runtime.database.unit_of_work() as s:
        org = Organisation(name=f"Bench {name}")
        s.add(org)
        s.flush()
        user = User(
            organisation_id=org.id, email=f"{name}-{time.time_ns()}@example.com", display_name=name
        )
        s.add(user)
        s.flush()
        s.add(
            MailboxConnection(
                user_id=user.id,
                sender_name=name,
                sender_address=f"{name}@example.com",
                smtp_host="127.0.0.1",
                smtp_port=25,
                smtp_security=Security.NONE,
                imap_host="",
                imap_port=server.imap_port,
                imap_security=Security.NONE,
                imap_username=account.username,
                imap_same_password=False,
                imap_password_encrypted=runtime.credentials.seal(account.password),
            )
        )
        return user.id


def _seed_sent(runtime: Runtime, user_id: int, count: int) -> None:
    """The emails the bench mailbox answers: <sent-n@mb.test>, sent to buyer n."""
    now = utcnow()
    with runtime.database.unit_of_work() as s:
        s.execute(
            insert(Message),
            [
                {
                    "user_id": user_id,
                    "subject": f"Offer number {n}",
                    "message_id_header": f"<sent-{n}@mb.test>",
                    "sender_address": "seller@example.com",
                    "created_at": now,
                    "sent_at": now,
                }
                for n in range(count)
            ],
        )
        ids = {
            header: message_id
            for header, message_id in s.execute(
                select(Message.message_id_header, Message.id).where(Message.user_id == user_id)
            )
        }
        s.execute(
            insert(RecipientCopy),
            [
                {
                    "message_id": ids[f"<sent-{n}@mb.test>"],
                    "address": f"buyer{n}@example.org",
                    "decision": "tracked",
                    "status": CopyStatus.SENT,
                    "sent_at": now,
                }
                for n in range(count)
            ],
        )


def _only_this_mailbox(runtime: Runtime, user_id: int, server: DovecotServer) -> None:
    """A first sync from scratch for this user's mailbox; every other one switched off."""
    with runtime.database.unit_of_work() as s:
        s.execute(delete(SyncState))
        s.execute(delete(ReceivedMail).where(ReceivedMail.user_id == user_id))
        s.execute(delete(Notification).where(Notification.user_id == user_id))
        s.execute(update(RecipientCopy).values(reply_count=0, replied_at=None))
        s.execute(update(Message).values(reply_count=0, last_reply_at=None))
        s.execute(update(MailboxConnection).values(imap_host=""))
        s.execute(
            update(MailboxConnection)
            .where(MailboxConnection.user_id == user_id)
            .values(imap_host=server.host)
        )


def _whole_messages(server: DovecotServer, account: Account) -> tuple[float, int]:
    """Plain imapclient: every message whole, one FETCH (the replies' reference)."""
    started = time.perf_counter()
    client = imapclient.IMAPClient(server.host, server.imap_port, ssl=False)
    client.login(account.username, account.password)
    client.select_folder("INBOX", readonly=True)
    fetched = client.fetch(client.search("ALL"), ["BODY.PEEK[]", "INTERNALDATE"])
    client.logout()
    return time.perf_counter() - started, len(fetched)


def measure_product(
    server: DovecotServer,
    account: Account,
    messages: int,
    rounds: int,
    batch: int,
    database_url: str,
    reference: Any,
) -> None:
    import asyncio

    folder = tempfile.TemporaryDirectory(prefix="mailbeacon-bench-sync-db-")
    settings = Settings(
        DATA_DIR=Path(folder.name),
        DATABASE_URL=database_url,
        DEMO_SMTP_PORT=0,
        ALLOW_LOOPBACK_MAIL_SERVERS=True,
        SYNC_FIRST_DAYS=30,
    )
    if is_sqlite(settings.database_url()):
        upgrade(settings.database_url())
    runtime = Runtime.from_settings(settings)
    backend = "sqlite" if is_sqlite(settings.database_url()) else "postgresql"
    try:
        quiet = _mailbox_user(runtime, server, account, "quinn")
        seller = _mailbox_user(runtime, server, account, "sally")
        started = time.perf_counter()
        _seed_sent(runtime, seller, messages)
        print(
            f"\nseeded {messages} sent emails in {time.perf_counter() - started:.2f}s ({backend})"
        )

        def product_round(user_id: int) -> tuple[float, Any]:
            _only_this_mailbox(runtime, user_id, server)
            worker = runtime.make_sync_worker(batch_size=batch)
            started = time.perf_counter()
            stats = asyncio.run(worker.run_once())
            return time.perf_counter() - started, stats

        ours: list[float] = []
        plain: list[float] = []
        ratios: list[float] = []
        for round_number in range(rounds):
            elapsed, stats = product_round(quiet)
            if (stats.headers, stats.stored, stats.failures) != (messages, 0, 0):
                raise SystemExit(f"first sync read {stats}")
            ref_elapsed, count, _size = reference()
            ours.append(messages / elapsed)
            plain.append(count / ref_elapsed)
            ratios.append(ours[-1] / plain[-1])
            print(
                f"round {round_number + 1}: product first sync {ours[-1]:,.0f} msgs/s "
                f"(fetched whole: {stats.fetched}), plain imapclient {plain[-1]:,.0f} msgs/s, "
                f"ratio {ratios[-1]:.2f}x"
            )
        matched: list[float] = []
        whole: list[float] = []
        for round_number in range(rounds):
            elapsed, stats = product_round(seller)
            if (stats.stored, stats.failures) != (messages, 0):
                raise SystemExit(f"the replies' sync stored {stats}")
            ref_elapsed, count = _whole_messages(server, account)
            matched.append(stats.stored / elapsed)
            whole.append(count / ref_elapsed)
            print(
                f"round {round_number + 1}: replies matched and stored {matched[-1]:,.0f}/s, "
                f"plain imapclient whole messages {whole[-1]:,.0f} msgs/s"
            )
        print(
            f"\nmailbeacon's first sync of {messages} messages ({backend}), median of {rounds}:\n"
            f"  SyncWorker.run_once, nothing to store:  {statistics.median(ours):,.0f} msgs/s\n"
            f"  plain imapclient, headers in one FETCH: {statistics.median(plain):,.0f} msgs/s\n"
            f"  ratio: {statistics.median(ratios):.2f}x (target: at least 0.5x)\n"
            f"  every message a reply to be stored:     {statistics.median(matched):,.0f} replies/s\n"
            f"  plain imapclient, whole messages:       {statistics.median(whole):,.0f} msgs/s"
        )
    finally:
        runtime.database.dispose()
        folder.cleanup()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="UIDs per FETCH for ours")
    parser.add_argument(
        "--product-rounds", type=int, default=3, help="rounds of the product's sync (0: skip)"
    )
    parser.add_argument("--database-url", default="", help="a migrated PostgreSQL (else SQLite)")
    args = parser.parse_args()
    reason = dovecot_missing_reason()
    if reason is not None:
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="mailbeacon-bench-sync-"))
    server = start_dovecot(root)
    try:
        account = server.add_user()
        started = time.perf_counter()
        append_messages(server, account, "INBOX", (message(n) for n in range(args.messages)))
        print(
            f"stored {args.messages} messages with MULTIAPPEND in "
            f"{time.perf_counter() - started:.2f}s"
        )
        # One untimed pass each so that neither pays for Dovecot's first index build.
        run_ours(server, account, args.batch)
        run_reference(server, account)
        ours: list[float] = []
        reference: list[float] = []
        ratios: list[float] = []
        for round_number in range(args.rounds):
            pair = {}
            order = ("ours", "reference") if round_number % 2 == 0 else ("reference", "ours")
            for name in order:
                if name == "ours":
                    elapsed, count, size = run_ours(server, account, args.batch)
                else:
                    elapsed, count, size = run_reference(server, account)
                if count != args.messages:
                    print(f"{name} read {count} messages, expected {args.messages}")
                    return 1
                pair[name] = (count / elapsed, size)
            if pair["ours"][1] != pair["reference"][1]:
                print("the two runs read different header bytes")
                return 1
            ours.append(pair["ours"][0])
            reference.append(pair["reference"][0])
            ratios.append(pair["ours"][0] / pair["reference"][0])
            print(
                f"round {round_number + 1}: ours {pair['ours'][0]:,.0f} msgs/s, "
                f"plain imapclient {pair['reference'][0]:,.0f} msgs/s, "
                f"ratio {ratios[-1]:.2f}x"
            )
        print(
            f"\n{args.messages} message headers, median of {args.rounds} rounds:\n"
            f"  mailbeacon fetch_since (batches of {args.batch}): "
            f"{statistics.median(ours):,.0f} msgs/s\n"
            f"  plain imapclient, one FETCH:              "
            f"{statistics.median(reference):,.0f} msgs/s\n"
            f"  ratio: {statistics.median(ratios):.2f}x (target: at least 0.5x)"
        )
        if args.product_rounds:
            measure_product(
                server,
                account,
                args.messages,
                args.product_rounds,
                args.batch,
                args.database_url,
                lambda: run_reference(server, account),
            )
        return 0
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
