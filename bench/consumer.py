"""How fast the journal consumer moves hits into the database, on one core.

Prepares a database with sent emails (``--messages`` x ``--copies`` recipient
copies) and a journal of ``--hits`` hits on them (a mix of people, image
proxies, scanners and repeats, as the edge would have recorded them), then, in
this process pinned to one core:

1. reference: the consumer with a ``store`` that does nothing (reading,
   checking and decoding the journal alone);
2. reference: the events inserted as they are, one executemany per batch,
   without classification, figures or observers;
3. mailbeacon: the consumer storing through the hit pipeline (load context ->
   classify -> events and figures -> notifications), exactly once by uid.

Target (issue 11): at least 20,000 hits/s into SQLite and into PostgreSQL.

On a PostgreSQL server with autovacuum off (this machine's is), the tables are analysed
during the pass as autovacuum would, every 10 s, so that the planner has statistics as
on a server in service (``--no-analyze``: not).

    .venv/bin/python bench/consumer.py                       # SQLite, 200,000 hits
    .venv/bin/python bench/consumer.py --hits 1000000 --database postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from datetime import datetime, timedelta
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import create_engine, insert, text  # noqa: E402

from mailbeacon.config import Settings  # noqa: E402
from mailbeacon.db import normalise_url  # noqa: E402
from mailbeacon.kit.clock import utcnow  # noqa: E402
from mailbeacon.kit.heap import freeze_startup_heap  # noqa: E402
from mailbeacon.migrate import upgrade  # noqa: E402
from mailbeacon.models import (  # noqa: E402
    CopyBody,
    CopyStatus,
    EventKind,
    Message,
    Organisation,
    RecipientCopy,
    TrackingEvent,
    User,
)
from mailbeacon.runtime import Runtime  # noqa: E402
from mailbeacon.tracking.hits import Hit  # noqa: E402
from mailbeacon.tracking.journal import JournalConsumer, JournalWriter  # noqa: E402

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Mozilla/5.0",
    "python-requests/2.32.3",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
]


def _pin() -> None:
    if os.environ.get("MB_BENCH_PINNED") or not shutil.which("taskset"):
        return
    os.environ["MB_BENCH_PINNED"] = "1"
    os.execvp("taskset", ["taskset", "-c", "0", sys.executable, *sys.argv])  # noqa: S606


def _database(url: str | None, folder: Path) -> tuple[str, str | None]:
    if url is None:
        return f"sqlite:///{folder / 'bench.db'}", None
    schema = f"mb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}", schema


def _seed(runtime: Runtime, messages: int, copies: int, body_bytes: int = 0) -> list[int]:
    # Sent before the hits (which span the last hour): a hit timed before its send is
    # "too fast", and with every hit so labelled no notification, webhook or
    # forwarded-open check would ever run.
    sent = utcnow() - timedelta(hours=2)
    with runtime.database.unit_of_work() as s:
        # Without consent required, so that the hits are stored, not withheld by the gate.
        org = Organisation(name="Bench", consent_required=False)
        s.add(org)
        s.flush()
        user = User(organisation_id=org.id, email="bench@example.com", display_name="Bench")
        s.add(user)
        s.flush()
        rows = [
            {"user_id": user.id, "subject": f"Offer {i}", "created_at": sent, "sent_at": sent}
            for i in range(messages)
        ]
        s.execute(insert(Message), rows)
        ids = [m for (m,) in s.execute(text("SELECT id FROM messages ORDER BY id"))]
        s.execute(
            insert(RecipientCopy),
            [
                {
                    "message_id": mid,
                    "address": f"r{c}.{mid}@example.org",
                    "decision": "tracked",
                    "status": CopyStatus.SENT,
                    "sent_at": sent,
                    "open_tracked": True,
                    "links_tracked": True,
                }
                for mid in ids
                for c in range(copies)
            ],
        )
        copy_ids = [c for (c,) in s.execute(text("SELECT id FROM recipient_copies ORDER BY id"))]
        if body_bytes > 0:
            # Each copy's own bodies, as planning writes them (HTML, and text a third of it).
            prose = "<p>Ordinary sales prose.</p>" * (body_bytes // 26)
            s.execute(
                insert(CopyBody),
                [
                    {
                        "copy_id": c,
                        "html_body": f"<p>Copy {c}</p>{prose}",
                        "text_body": f"Copy {c} {prose[: body_bytes // 3]}",
                    }
                    for c in copy_ids
                ],
            )
        return copy_ids


def _hits(copy_ids: list[int], count: int, start: float, traffic: str) -> Iterator[Hit]:
    """The same hits every time (a fixed seed), made as they are used: a million held
    at once would take gigabytes.

    ``uniform``: every hit draws its agent from AGENTS and its network from 256
    prefixes, whatever the copy (hard on the forwarded-open rule: nearly every human
    open is a new source). ``recipients``: a copy's people open from its recipient's
    one or two devices and networks, with now and then someone else (a forward),
    beside image proxies and machines from their own networks.
    """
    rng = random.Random(7)
    people = [AGENTS[0], AGENTS[1], AGENTS[5]]
    profiles: dict[int, tuple[list[str], list[str]]] = {}
    for i in range(count):
        click = rng.random() < 0.3
        at = start + i * (3000 / count)
        copy_id = rng.choice(copy_ids)
        if traffic == "uniform":
            agent, prefix = rng.choice(AGENTS), f"198.51.{rng.randrange(256)}.0/24"
        else:
            profile = profiles.get(copy_id)
            if profile is None:
                profile = profiles[copy_id] = (
                    rng.sample(people, rng.choice((1, 1, 2))),
                    [f"198.51.{rng.randrange(256)}.0/24" for _ in range(rng.choice((1, 2)))],
                )
            draw = rng.random()
            if draw < 0.6:  # the recipient
                agent, prefix = rng.choice(profile[0]), rng.choice(profile[1])
            elif draw < 0.7:  # an image proxy fetching for them
                agent, prefix = AGENTS[2], f"66.249.{80 + rng.randrange(4)}.0/24"
            elif draw < 0.95:  # link checkers and scanners
                agent, prefix = rng.choice(AGENTS[3:5]), f"203.0.{rng.randrange(256)}.0/24"
            else:  # someone the email was forwarded to
                agent, prefix = rng.choice(people), f"192.0.{rng.randrange(256)}.0/24"
        yield Hit(
            # As the edge mints them (tracking.hits.new_uid), from the fixed seed.
            uid=f"{int(at * 1000):012x}{rng.getrandbits(80):020x}",
            kind=EventKind.CLICK if click else EventKind.OPEN,
            copy_id=copy_id,
            link_position=rng.randrange(3) if click else None,
            occurred_at=at,
            user_agent=agent,
            ip_prefix=prefix,
            network=None,
            is_head=False,
            prefetch_hint=None,
            viewer_user_id=None,
        )


def _batches(hits: Iterable[Hit], size: int) -> Iterator[list[Hit]]:
    batch: list[Hit] = []
    for hit in hits:
        batch.append(hit)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _journal(folder: Path, hits: Iterable[Hit]) -> None:
    writer = JournalWriter(folder, max_segment_age=3600)
    for batch in _batches(hits, 10_000):
        writer.append_many(batch)
    writer.close()


def _plain_row(h: Hit, now: datetime) -> dict[str, object]:
    return {
        "uid": h.uid,
        "copy_id": h.copy_id,
        "message_id": 1,
        "kind": h.kind,
        "link_position": h.link_position,
        "occurred_at": now,
        "recorded_at": now,
        "label": "human",
        "reason": "",
        "user_agent": h.user_agent,
        "ip_prefix": h.ip_prefix,
        "network": None,
        "is_head": False,
        "prefetch_hint": None,
        "viewer_user_id": None,
    }


def _timed(label: str, count: int, work: object) -> float:
    assert callable(work)
    began, cpu = time.perf_counter(), time.process_time()
    work()
    seconds = time.perf_counter() - began
    # This process's CPU time: on a shared machine it moves less than the wall clock
    # (it leaves out waiting for the core, the disk and the database server).
    cpu = time.process_time() - cpu
    rate = count / seconds
    print(
        f"  {label:<58} {rate:>10,.0f} hits/s  ({seconds:.1f} s; {count / cpu:,.0f} per CPU s)",
        flush=True,
    )
    return rate


def _probe_writes(url: str, every: float, out: Path) -> None:
    """Run in a process of its own: one small write every ``every`` seconds (the kind
    a settings page or a send makes) until SIGTERM, then each one's time in ``out``."""
    from mailbeacon.db import Database

    database = Database(url)
    stop = False

    def on_term(_signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    times: list[float] = []
    while not stop:
        began = time.perf_counter()
        with database.unit_of_work() as s:
            s.execute(text("UPDATE organisations SET name = name WHERE id = 1"))
        times.append(time.perf_counter() - began)
        time.sleep(every)
    out.write_text("\n".join(f"{t:.6f}" for t in times))
    database.dispose()


class _Autovacuum:
    """What autovacuum would do during the pass, where the server has it off (this
    machine's does: conf.d/90-ci.conf). Every few seconds, each table of the bench's
    schema changed by more than autovacuum's default threshold since its last analysis
    (50 rows + 10% of it) is analysed, from a connection of its own: a server in service
    has statistics, and without any the planner takes a partial index built on an empty
    table for an empty one."""

    def __init__(self, url: str, every: float) -> None:
        self.engine = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
        self.every = every
        self.runs = 0
        self.seconds = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def needed(self) -> bool:
        with self.engine.connect() as conn:
            return conn.exec_driver_sql("SHOW autovacuum").scalar() == "off"

    def _loop(self) -> None:
        while not self.stop.wait(self.every):
            with self.engine.connect() as conn:
                due = conn.exec_driver_sql(
                    "SELECT s.relname FROM pg_stat_user_tables s JOIN pg_class c"
                    " ON c.oid = s.relid WHERE s.schemaname = current_schema()"
                    " AND s.n_mod_since_analyze > 50 + 0.1 * greatest(c.reltuples, 0)"
                ).scalars()
                for table in list(due):
                    began = time.perf_counter()
                    conn.exec_driver_sql(f'ANALYZE "{table}"')
                    self.seconds += time.perf_counter() - began
                    self.runs += 1

    def __enter__(self) -> _Autovacuum:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.engine.dispose()


def _probe_report(path: Path) -> str:
    times = sorted(float(x) for x in path.read_text().split())
    if not times:
        return "  other writers: no write finished"

    def at(q: float) -> str:
        return f"{times[min(len(times) - 1, int(q * len(times)))] * 1000:,.0f}"

    return (
        f"  other writers during it ({len(times)} small writes, ms): p50 {at(0.5)},"
        f" p90 {at(0.9)}, p99 {at(0.99)}, max {times[-1] * 1000:,.0f}"
    )


def _empty_events(runtime: Runtime) -> None:
    with runtime.database.unit_of_work() as s:
        s.execute(text("DELETE FROM notifications"))
        s.execute(text("DELETE FROM link_click_stats"))
        s.execute(text("DELETE FROM tracking_events"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--messages", type=int, default=2_000)
    parser.add_argument("--copies", type=int, default=5)
    parser.add_argument(
        "--batch", type=int, help="INGEST_BATCH_MAX (default: the product's for the database)"
    )
    parser.add_argument(
        "--body-bytes",
        type=int,
        default=0,
        help="each copy's HTML body size (the corpus's median is about 16,000)",
    )
    parser.add_argument("--traffic", choices=("uniform", "recipients"), default="uniform")
    parser.add_argument("--database", help="postgresql://... (default: SQLite in a temp folder)")
    parser.add_argument(
        "--probe-writes",
        action="store_true",
        help="during the pass, time a small write every 20 ms from a process on another core",
    )
    parser.add_argument(
        "--no-analyze",
        action="store_true",
        help="PostgreSQL with autovacuum off: do not analyse tables during the pass",
    )
    parser.add_argument("--probe", nargs=2, help=argparse.SUPPRESS)  # URL, output file
    args = parser.parse_args()
    if args.probe:
        _probe_writes(args.probe[0], 0.02, Path(args.probe[1]))
        return 0
    _pin()
    folder = Path(tempfile.mkdtemp(prefix="mb-bench-consumer-"))
    url, schema = _database(args.database, folder)
    try:
        upgrade(url)
        settings = Settings(
            DATA_DIR=folder / "data",
            DATABASE_URL=url,
            TOO_FAST_SECONDS=0,
            INGEST_BATCH_MAX=args.batch,
        )
        runtime = Runtime.from_settings(settings)
        copy_ids = _seed(runtime, args.messages, args.copies, args.body_bytes)
        batch_size = runtime.ingest_batch_max()
        # What `serve` and `mailbeacon ingest` run: the ingest's consumer pass, made and
        # then frozen into the heap as `ingest` does at its start (the references below
        # run in the same frozen heap).
        ingest = runtime.make_ingest(consume=True)
        freeze_startup_heap()
        start = time.time() - 3600

        def hits() -> Iterator[Hit]:
            return _hits(copy_ids, args.hits, start, args.traffic)

        backend = runtime.database.engine.dialect.name
        cpu = subprocess.run(["taskset", "-p", str(os.getpid())], capture_output=True, text=True)
        print(
            f"{backend}: {args.hits:,} hits on {len(copy_ids):,} copies, {args.traffic} traffic,"
            f" batches of {batch_size:,}; {cpu.stdout.strip()}"
        )
        print(f"  load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")

        journal = folder / "journal"
        _journal(journal, hits())
        consumer = JournalConsumer(journal, lambda batch: None, batch_size=batch_size)
        _timed("reference: read and decode the journal only", args.hits, consumer.consume_available)

        def plain_insert() -> None:
            for batch in _batches(hits(), batch_size):
                now = utcnow()
                rows = [_plain_row(h, now) for h in batch]
                with runtime.database.unit_of_work() as s:
                    s.execute(insert(TrackingEvent), rows)

        _timed("reference: plain executemany INSERT of the same events", args.hits, plain_insert)
        _empty_events(runtime)

        _journal(ingest.directory, hits())
        probe = None
        if args.probe_writes:
            probe_out = folder / "probe.txt"
            probe = subprocess.Popen(
                # The other core: the consumer keeps its own to itself, as in the runs without.
                ["taskset", "-c", "1", sys.executable, __file__, "--probe", url, str(probe_out)]
            )
        autovacuum = None
        if backend == "postgresql" and not args.no_analyze:
            autovacuum = _Autovacuum(url, every=10.0)
            if not autovacuum.needed():
                autovacuum.engine.dispose()
                autovacuum = None
        with autovacuum or nullcontext():
            rate = _timed(
                "mailbeacon: consumer -> hit pipeline (exactly once)",
                args.hits,
                ingest.consume_once,
            )
        if autovacuum is not None:
            print(
                f"  autovacuum is off on the server: the bench analysed tables"
                f" {autovacuum.runs} times meanwhile ({autovacuum.seconds:.1f} s)"
            )
        if probe is not None:
            probe.send_signal(signal.SIGTERM)
            probe.wait(60)
            print(_probe_report(probe_out))
        with runtime.database.unit_of_work(immediate=False) as s:
            stored = s.scalar(text("SELECT count(*) FROM tracking_events"))
            labels = s.execute(
                text("SELECT label, count(*) FROM tracking_events GROUP BY label ORDER BY label")
            ).all()
            notified = s.scalar(text("SELECT count(*) FROM notifications"))
            forwarded = s.scalar(
                text("SELECT count(*) FROM tracking_events WHERE possibly_forwarded")
            )
        assert stored == args.hits, (stored, args.hits)
        print(
            "  stored: "
            + ", ".join(f"{label} {n:,}" for label, n in labels)
            + f"; {notified:,} notifications, {forwarded:,} possibly forwarded"
        )
        print(f"  load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        print(
            f"  target 20,000 hits/s: {'met' if rate >= 20_000 else 'NOT met'} ({rate / 20_000:.2f}x)"
        )
        runtime.database.dispose()
    finally:
        if schema is not None:
            admin = create_engine(normalise_url(args.database or ""), isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
        shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
