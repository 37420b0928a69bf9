#!/usr/bin/env python3
"""First sync of a mailbox: headers of N messages through our IMAP client, beside plain imapclient.

    .venv/bin/python bench/sync.py [--messages 10000] [--rounds 5] [--batch 500]

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
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

import imapclient  # noqa: E402
from tests.sync.dovecot import (  # noqa: E402
    Account,
    DovecotServer,
    append_messages,
    dovecot_missing_reason,
    start_dovecot,
)

from mailbeacon.models.mailbox import Security  # noqa: E402
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
        server.host, server.imap_port, Security.NONE, account.username, account.password
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500, help="UIDs per FETCH for ours")
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
        return 0
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
