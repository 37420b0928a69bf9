"""A journal consumer process for the crash tests in test_journal.py.

    python journal_consumer_proc.py DIR LOG [--batch-size N] [--store-delay S]
                                            [--hang-at-store K] [--stop-file PATH]

Its ``store`` appends the uids of each batch to LOG (one per line, one write
per batch). With ``--hang-at-store K`` the K-th store writes its uids, prints
``stored`` and never returns, so the test can kill it between store and
checkpoint. Otherwise it consumes until the stop file exists and a last pass
finds nothing more, then prints ``stopped``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalConsumer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("log", type=Path)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--store-delay", type=float, default=0.0)
    parser.add_argument("--hang-at-store", type=int, default=0)
    parser.add_argument("--stop-file", type=Path)
    parser.add_argument("--poll", type=float, default=0.05)
    args = parser.parse_args()
    log_fd = os.open(args.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stores = 0

    def store(batch: list[Hit]) -> None:
        nonlocal stores
        stores += 1
        os.write(log_fd, "".join(hit.uid + "\n" for hit in batch).encode())
        if stores == args.hang_at_store:
            print("stored", flush=True)
            while True:
                time.sleep(60)
        if args.store_delay:
            time.sleep(args.store_delay)

    consumer = JournalConsumer(args.directory, store, batch_size=args.batch_size)
    print("ready", flush=True)
    while True:
        stopping = args.stop_file is not None and args.stop_file.exists()
        if consumer.consume_available() == 0:
            if stopping:
                break
            time.sleep(args.poll)
    print("stopped", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
