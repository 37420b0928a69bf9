"""A journal writer process for the crash tests in test_journal.py.

    python journal_writer_proc.py DIR [--appenders N] [--count N] [--segment-bytes N]
                                      [--segment-age S] [--file-size-limit N]

Prints ``ready``, then ``ok <uid>`` once each append has returned (so every
uid printed was acknowledged before whatever happens next), ``err <uid>
<errno>`` for an append that raised, and ``done`` after a clean close. With
``--count 0`` it appends until it is killed.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import signal
import sys
import time
import uuid
from pathlib import Path

from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalWriter


def make_hit(n: int) -> Hit:
    return Hit(
        uid=uuid.uuid4().hex,
        kind="click" if n % 3 == 0 else "open",
        copy_id=n,
        link_position=n % 5 if n % 3 == 0 else None,
        occurred_at=time.time(),
        user_agent=f"Mozilla/5.0 (test writer {n})",
        ip_prefix="203.0.113.0/24",
        network=None,
        is_head=False,
        prefetch_hint=None,
        viewer_user_id=None,
    )


async def appender(writer: JournalWriter, left: list[int]) -> None:
    while left[0] != 0:
        left[0] -= 1
        hit = make_hit(left[0])
        try:
            await writer.append(hit)
        except OSError as exc:
            sys.stdout.write(f"err {hit.uid} {exc.errno}\n")
        else:
            sys.stdout.write(f"ok {hit.uid}\n")
        sys.stdout.flush()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--appenders", type=int, default=16)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--segment-bytes", type=int, default=64 << 20)
    parser.add_argument("--segment-age", type=float, default=2.0)
    parser.add_argument("--file-size-limit", type=int, default=0)
    args = parser.parse_args()
    if args.file_size_limit:
        # Writes past the limit then fail with EFBIG, a real I/O error from the
        # kernel, instead of killing the process with SIGXFSZ.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (args.file_size_limit, args.file_size_limit))
    writer = JournalWriter(
        args.directory,
        max_segment_bytes=args.segment_bytes,
        max_segment_age=args.segment_age,
    )
    print("ready", flush=True)
    left = [args.count if args.count > 0 else -1]
    await asyncio.gather(*(appender(writer, left) for _ in range(args.appenders)))
    await writer.aclose()
    print("done", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
