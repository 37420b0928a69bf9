#!/usr/bin/env python3
"""The hit journal: durable appends/s with group commit, and consumer records/s.

    .venv/bin/python bench/journal.py [--appends 100000] [--appenders 64]
                                      [--records 1000000] [--cpu 0] [--dir DIR]

Runs pinned to one core (re-executes itself under ``taskset -c CPU`` when
taskset exists), in a fresh folder under --dir (default: the system temporary
folder; give a folder on the disk the journal will live on).

(a) Appends: ``--appenders`` asyncio tasks await ``JournalWriter.append`` in a
loop until ``--appends`` hits are durable; prints appends/s, p50/p99 latency
and the mean group size, beside two references measured in the same run:
``write()+fdatasync()`` once per hit on a file in the same folder (what the
same appends cost without group commit; timed on a sample, extrapolated), and
a bare event loop doing only a future round-trip per hit with the same number
of tasks (the ceiling the journal's overhead is measured against).

(b) Consumer: writes ``--records`` hits, then times ``JournalConsumer`` reading
and decoding them all (no-op store, 5,000 per batch, segments deleted after),
beside reading the same bytes with ``os.read`` alone and decoding the same hits
from the spool's JSON lines (``Hit.from_json``, on a sample). Encode and decode
cost per record are printed too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalConsumer, JournalWriter
from mailbeacon.tracking.journal_records import decode_records, encode_hit

_PINNED_ENV = "MAILBEACON_BENCH_PINNED"

# User agents of the kinds a tracking pixel sees most: image proxies, desktop
# clients and browsers (strings as these clients send them, widely published).
AGENTS = [
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/125.0.0.0 Safari/537.36 Edg/125.0.0.0",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17126; Pro)",
]


def make_hit(n: int) -> Hit:
    click = n % 4 == 0
    return Hit(
        uid=uuid.uuid4().hex,
        kind="click" if click else "open",
        copy_id=100_000 + n % 50_000,
        link_position=n % 7 if click else None,
        occurred_at=time.time(),
        user_agent=AGENTS[n % len(AGENTS)],
        ip_prefix="203.0.113.0/24" if n % 3 else "2001:db8:1234::/48",
        network="google-image-proxy" if n % len(AGENTS) == 0 else None,
        is_head=False,
        prefetch_hint=None,
        viewer_user_id=None,
    )


def run_pinned(cpu: int) -> int | None:
    """Run this script again under taskset (its exit code), or pin this process (None)."""
    if os.environ.get(_PINNED_ENV):
        return None
    taskset = shutil.which("taskset")
    if taskset is None:
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, {cpu})
        return None
    env = {**os.environ, _PINNED_ENV: "1"}
    return subprocess.call([taskset, "-c", str(cpu), sys.executable, *sys.argv], env=env)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def journal_appends(
    directory: Path, total: int, tasks: int
) -> tuple[float, float, list[float], dict[str, int]]:
    hits = [make_hit(n) for n in range(total)]
    latencies: list[float] = []
    next_hit = 0
    writer = JournalWriter(directory)
    clock = time.perf_counter

    async def appender() -> None:
        nonlocal next_hit
        while next_hit < total:
            hit = hits[next_hit]
            next_hit += 1
            started = clock()
            await writer.append(hit)
            latencies.append(clock() - started)

    await writer.append(make_hit(-1))  # the first segment's creation is not the subject
    started, cpu = clock(), time.process_time()
    await asyncio.gather(*(appender() for _ in range(tasks)))
    elapsed, cpu = clock() - started, time.process_time() - cpu
    await writer.aclose()
    return total / elapsed, cpu / total, latencies, writer.stats


async def bare_round_trips(total: int, tasks: int) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    done = 0

    async def worker() -> None:
        nonlocal done
        while done < total:
            done += 1
            fut: asyncio.Future[None] = loop.create_future()
            loop.call_soon(fut.set_result, None)
            await fut

    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return total / (time.perf_counter() - started), (time.process_time() - cpu) / total


def naive_fsync_per_hit(directory: Path, seconds: float) -> float:
    records = [encode_hit(make_hit(n)) for n in range(1000)]
    path = directory / "naive.log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(fd, records[count % 1000])
            os.fdatasync(fd)
            count += 1
        rate = count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        path.unlink()
    return rate


def encode_decode_cost(count: int) -> tuple[float, float]:
    hits = [make_hit(n) for n in range(count)]
    started = time.perf_counter()
    data = b"".join([encode_hit(h) for h in hits])
    encode = (time.perf_counter() - started) / count
    out: list[Hit] = []
    started = time.perf_counter()
    decode_records(data, 0, len(data), count, out)
    decode = (time.perf_counter() - started) / count
    assert out == hits
    return encode, decode


def consumer_rate(directory: Path, total: int) -> tuple[float, float, float, int]:
    with JournalWriter(directory) as writer:
        for start in range(0, total, 10_000):
            writer.append_many([make_hit(n) for n in range(start, min(total, start + 10_000))])
    size = sum(p.stat().st_size for p in directory.glob("*.seg"))
    # The bytes alone, as fast as the OS gives them (from the page cache here).
    started = time.perf_counter()
    for path in sorted(directory.glob("*.seg")):
        fd = os.open(path, os.O_RDONLY)
        while os.read(fd, 1 << 20):
            pass
        os.close(fd)
    raw = total / (time.perf_counter() - started)
    delivered = 0

    def store(batch: list[Hit]) -> None:
        nonlocal delivered
        delivered += len(batch)

    started = time.perf_counter()
    JournalConsumer(directory, store, batch_size=5000).consume_available()
    rate = total / (time.perf_counter() - started)
    assert delivered == total, (delivered, total)
    assert not list(directory.glob("*.seg"))
    sample = [make_hit(n).to_json() for n in range(50_000)]
    started = time.perf_counter()
    for line in sample:
        Hit.from_json(line)
    json_rate = len(sample) / (time.perf_counter() - started)
    return rate, raw, json_rate, size


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--appends", type=int, default=100_000)
    parser.add_argument("--appenders", type=int, default=64)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--naive-seconds", type=float, default=3.0)
    parser.add_argument("--cpu", type=int, default=0)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    code = run_pinned(args.cpu)
    if code is not None:
        return code
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"python {sys.version.split()[0]}, cpus allowed: {affinity}, folder: {args.dir}")
    work = Path(tempfile.mkdtemp(prefix="mb-journal-bench-", dir=args.dir))
    try:
        encode, decode = encode_decode_cost(100_000)
        print(f"\nrecord: encode {encode * 1e6:.2f} us, decode {decode * 1e6:.2f} us per hit")

        print(f"\n(a) {args.appends} appends from {args.appenders} tasks, one core")
        rate, cpu, latencies, stats = asyncio.run(
            journal_appends(work / "a", args.appends, args.appenders)
        )
        group = stats["records"] / max(1, stats["commits"])
        print(
            f"  journal append (group commit): {rate:10,.0f} appends/s   "
            f"p50 {percentile(latencies, 0.5) * 1e3:.2f} ms  "
            f"p99 {percentile(latencies, 0.99) * 1e3:.2f} ms  "
            f"mean {statistics.fmean(latencies) * 1e3:.2f} ms\n"
            f"    {stats['commits']} fdatasyncs of {group:.1f} hits each, one every "
            f"{args.appends / rate / stats['commits'] * 1e3:.2f} ms; "
            f"CPU {cpu * 1e6:.1f} us per append (loop and writer thread)"
        )
        naive = naive_fsync_per_hit(work, args.naive_seconds)
        print(
            f"  write+fdatasync per hit:       {naive:10,.0f} appends/s   "
            f"(same {args.appends} hits would take {args.appends / naive:.1f} s "
            f"instead of {args.appends / rate:.1f} s)"
        )
        bare, bare_cpu = asyncio.run(bare_round_trips(args.appends, args.appenders))
        print(
            f"  bare loop, future round-trip:  {bare:10,.0f} per s       "
            f"CPU {bare_cpu * 1e6:.1f} us per round-trip"
        )
        print(
            f"  ratios: journal / per-hit fsync = {rate / naive:.1f}x appends/s; "
            f"journal / bare loop = {rate / bare:.2f} (throughput), "
            f"{cpu / bare_cpu:.1f}x (CPU per hit)"
        )

        print(f"\n(b) consumer over {args.records:,} records")
        consumer, raw, json_rate, size = consumer_rate(work / "b", args.records)
        print(f"  journal size: {size / 2**20:.1f} MiB ({size / args.records:.0f} bytes/hit)")
        print(f"  consumer read+decode+checkpoint+delete: {consumer:10,.0f} records/s")
        print(f"  os.read of the same bytes alone:        {raw:10,.0f} records/s")
        print(f"  spool JSON lines, Hit.from_json:        {json_rate:10,.0f} records/s")
        print(
            f"  ratios: consumer / JSON decode = {consumer / json_rate:.1f}x; "
            f"consumer / 20,000 per s target = {consumer / 20_000:.0f}x"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
