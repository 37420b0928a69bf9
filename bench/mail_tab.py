#!/usr/bin/env python3
"""Server-side latency of the Mail tab and an email's detail, on a large history.

    .venv/bin/python bench/mail_tab.py [--messages 100000] [--events 1000000]
                                       [--rounds 60] [--database-url URL] [--keep]
                                       [--schema NAME] [--data-dir DIR]

Seeds one sender with N sent emails (two recipients each, two links each, one in
ten with tracking off) and M tracking events spread over them the way real
traffic falls (most emails get a few hits, some none, one is hammered by a
scanner with 2% of all events), with the figures on ``messages``,
``recipient_copies`` and ``link_click_stats`` consistent with the events, as the
ingest writer keeps them. A colleague in the same organisation has emails of
his own, so every query has something to leave out.

Then it times, in this process, each query the pages make (``mail/reading.py``) and
each whole page or API answer through the ASGI app (routing, session, queries,
template; no network), and prints p50 and p95 per case beside two references
measured in the same run: a bare ``SELECT 1`` and the page's own index range
read alone (ids of the newest 50 emails). The target is p95 under 100 ms.

SQLite in a fresh temporary data folder unless --database-url names PostgreSQL;
there the seed goes into a schema of its own, dropped at the end (--keep keeps
it, and a later run with --keep and the same --schema reuses it). With SQLite,
--data-dir names the folder, and a later run with the same folder reuses it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import httpx  # noqa: E402
from sqlalchemy import create_engine, func, insert, select, text  # noqa: E402

from mailbeacon.accounts.schemas import NewUser  # noqa: E402
from mailbeacon.accounts.service import account_service  # noqa: E402
from mailbeacon.asgi import MailbeaconApp  # noqa: E402
from mailbeacon.config import Settings  # noqa: E402
from mailbeacon.db import normalise_url  # noqa: E402
from mailbeacon.mail import reading  # noqa: E402
from mailbeacon.mail.schemas import MailFilter  # noqa: E402
from mailbeacon.migrate import upgrade  # noqa: E402
from mailbeacon.models import (  # noqa: E402
    LinkClickStat,
    Message,
    MessageLink,
    Notification,
    RecipientCopy,
    TrackingEvent,
)
from mailbeacon.models.event import PERSON_LABELS  # noqa: E402
from mailbeacon.notify.service import notification_service  # noqa: E402
from mailbeacon.runtime import Runtime  # noqa: E402

PASSWORD = "benchmark password"  # noqa: S105 (a throwaway user in a throwaway database)
LABELS = [  # (label, weight): what a busy sales mailbox sees
    ("human", 40),
    ("image_proxy", 10),
    ("apple_mpp", 22),
    ("scanner", 10),
    ("prefetch", 6),
    ("self", 6),
    ("duplicate", 6),
]
REASONS = {
    "human": "Opened in Chrome on Windows",
    "image_proxy": "Gmail image proxy (GoogleImageProxy): a real open, without device or place",
    "apple_mpp": "Apple Mail Privacy Protection: Apple's proxy loaded the images",
    "scanner": "Fetched by Barracuda, a security gateway",
    "prefetch": "A HEAD request: nobody looks at an image with HEAD",
    "self": "Your own signed-in browser",
    "duplicate": "The same source repeated the hit within 10 seconds",
}
CHUNK = 5000


# ------------------------------------------------------------------ seeding


def _users(runtime: Runtime) -> tuple[int, int]:
    with runtime.database.unit_of_work() as s:
        ids = []
        for email, name in (("sally@example.com", "Sally"), ("tom@example.com", "Tom")):
            user = account_service.create_user(
                s, NewUser(email=email, password=PASSWORD, name=name, organisation="Acme")
            )
            ids.append(user.id)
        return ids[0], ids[1]


def _insert(conn: Any, table: Any, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        # COPY: an order of magnitude faster than INSERT for a seed this size.
        columns = list(rows[0])
        raw = conn.connection.driver_connection
        with (
            raw.cursor() as cur,
            cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy,
        ):
            for row in rows:
                copy.write_row([row[c] for c in columns])
    else:
        conn.execute(insert(table), rows)


def seed(runtime: Runtime, messages: int, events: int, rng: random.Random) -> dict[str, int]:
    """Seed the history; returns ids worth timing (a quiet email, a busy one, the hammered one)."""
    sally, tom = _users(runtime)
    engine = runtime.database.engine
    now = datetime.now(UTC).replace(microsecond=0)
    span = timedelta(days=730)
    hammered_share = events // 50
    active = int(messages * 0.55)
    # Pareto-distributed hit counts over the active emails, scaled to the total.
    weights = [rng.paretovariate(1.6) for _ in range(active)]
    scale = (events - hammered_share) / sum(weights)
    counts = [int(w * scale) for w in weights]
    counts[0] += events - hammered_share - sum(counts)
    tracked_of = {mid: rng.random() >= 0.10 for mid in range(1, messages + 1)}
    active_ids = rng.sample([mid for mid, on in tracked_of.items() if on], active)
    hits_of = dict(zip(active_ids, counts, strict=True))
    hammered = active_ids[1]
    hits_of[hammered] = hits_of.get(hammered, 0) + hammered_share
    labels, label_weights = zip(*LABELS, strict=True)
    picks: dict[str, int] = {"hammered": hammered}

    mt, ct = Message.__table__, RecipientCopy.__table__
    lt, st, et = MessageLink.__table__, LinkClickStat.__table__, TrackingEvent.__table__
    written = 0
    for start in range(1, messages + 1, CHUNK):
        m_rows, c_rows, l_rows, s_rows, e_rows = [], [], [], [], []
        for mid in range(start, min(start + CHUNK, messages + 1)):
            created = now - span + span * (mid / messages) - timedelta(seconds=rng.randint(0, 60))
            tracked = tracked_of[mid]
            owner = tom if mid % 20 == 0 else sally
            copies = [(2 * mid - 1, f"lead{mid}@customer{mid % 997}.example"),
                      (2 * mid, f"boss{mid}@customer{mid % 997}.example")]  # fmt: skip
            figs = {cid: defaultdict(int) for cid, _ in copies}
            times: dict[int, dict[str, datetime]] = {cid: {} for cid, _ in copies}
            link_figs: dict[tuple[int, int], list[Any]] = {}
            n = hits_of.get(mid, 0) if tracked else 0
            for _ in range(n):
                cid = copies[rng.random() < 0.3][0]
                kind = "click" if rng.random() < 0.15 else "open"
                label = "scanner" if mid == hammered else rng.choices(labels, label_weights)[0]
                at = created + timedelta(minutes=rng.expovariate(1 / 600))
                position = rng.randint(0, 1) if kind == "click" else None
                person = label in PERSON_LABELS and not (kind == "click" and label != "human")
                e_rows.append(
                    {
                        "uid": uuid.uuid4().hex,
                        "copy_id": cid,
                        "message_id": mid,
                        "kind": kind,
                        "link_position": position,
                        "occurred_at": at,
                        "recorded_at": at,
                        "label": label if person or label not in PERSON_LABELS else "scanner",
                        "reason": REASONS[label],
                        "user_agent": "Mozilla/5.0",
                        "ip_prefix": "203.0.113.0/24",
                        "network": None,
                        "is_head": label == "prefetch",
                        "prefetch_hint": None,
                        "viewer_user_id": owner if label == "self" else None,
                    }
                )
                f = figs[cid]
                t = times[cid]
                if not person:
                    f["machine"] += 1
                else:
                    f[kind] += 1
                    first, last = f"first_{kind}", f"last_{kind}"
                    t[first] = min(t.get(first, at), at)
                    t[last] = max(t.get(last, at), at)
                if position is not None:
                    lf = link_figs.setdefault((cid, position), [0, 0, None, None])
                    if person:
                        lf[0] += 1
                        lf[2] = at if lf[2] is None else min(lf[2], at)
                        lf[3] = at if lf[3] is None else max(lf[3], at)
                    else:
                        lf[1] += 1
            total: dict[str, Any] = defaultdict(int)
            first_last: dict[str, datetime] = {}
            for cid, address in copies:
                f, t = figs[cid], times[cid]
                c_rows.append(
                    {
                        "id": cid, "message_id": mid, "address": address, "kind": "to",
                        "decision": "tracked" if tracked else "disabled_by_user",
                        "decision_reason": "Tracked." if tracked else "Tracking was switched off.",
                        "open_tracked": tracked, "links_tracked": tracked, "status": "sent",
                        "sent_at": created, "attempts": 1, "smtp_reply": "250 OK",
                        "open_count": f["open"], "click_count": f["click"],
                        "machine_event_count": f["machine"],
                        "first_open_at": t.get("first_open"), "last_open_at": t.get("last_open"),
                        "first_click_at": t.get("first_click"),
                        "last_click_at": t.get("last_click"),
                    }
                )  # fmt: skip
                for key in ("open", "click", "machine"):
                    total[key] += f[key]
                for key, value in t.items():
                    pick = min if key.startswith("first") else max
                    first_last[key] = pick(first_last.get(key, value), value)
            m_rows.append(
                {
                    "id": mid, "user_id": owner, "subject": f"Proposal {mid} for customer {mid % 997}",
                    "body_html": f'<p>Hello,</p><p>see <a href="https://example.com/p/{mid}">the '
                    f'proposal</a> and <a href="https://example.com/pricing">pricing</a>.</p>',
                    "body_text": None, "open_tracking": tracked, "link_tracking": tracked,
                    "is_preview": False, "created_at": created, "sent_at": created,
                    "sender_name": "Sally", "sender_address": "sally@example.com",
                    "to_header": ", ".join(a for _, a in copies), "cc_header": "",
                    "message_id_header": f"<{mid}@bench.example>",
                    "open_count": total["open"], "click_count": total["click"],
                    "machine_event_count": total["machine"],
                    "first_open_at": first_last.get("first_open"),
                    "last_open_at": first_last.get("last_open"),
                    "first_click_at": first_last.get("first_click"),
                    "last_click_at": first_last.get("last_click"),
                }
            )  # fmt: skip
            for position, url in enumerate((f"https://example.com/p/{mid}",
                                            "https://example.com/pricing")):  # fmt: skip
                l_rows.append(
                    {"message_id": mid, "position": position, "url": url,
                     "text": ("the proposal", "pricing")[position]}
                )  # fmt: skip
            for (cid, position), (people, machines, first, last) in link_figs.items():
                s_rows.append(
                    {"copy_id": cid, "position": position, "click_count": people,
                     "machine_click_count": machines, "first_click_at": first,
                     "last_click_at": last}
                )  # fmt: skip
            if tracked and 3 <= n <= 12 and "busy" not in picks and owner == sally:
                picks["busy"] = mid
            if tracked and n == 0 and "quiet" not in picks and owner == sally:
                picks["quiet"] = mid
        with engine.begin() as conn:
            for table, rows in ((mt, m_rows), (ct, c_rows), (lt, l_rows), (st, s_rows),
                                (et, e_rows)):  # fmt: skip
                _insert(conn, table, rows)
        written += len(e_rows)
        print(f"\r  seeded {min(start + CHUNK - 1, messages):,} emails, {written:,} events",
              end="", flush=True)  # fmt: skip
    print()
    # Notifications for the feed: the first open of each opened copy.
    with engine.begin() as conn:
        rows = conn.execute(
            select(ct.c.id, ct.c.message_id, ct.c.first_open_at, mt.c.user_id)
            .join(mt, mt.c.id == ct.c.message_id)
            .where(ct.c.open_count > 0)
        ).all()
        _insert(
            conn,
            Notification.__table__,
            [
                {"user_id": uid, "kind": "first_open", "message_id": mid, "copy_id": cid,
                 "link_position": None, "occurrences": 1, "title": f"Copy {cid} was opened",
                 "created_at": at, "updated_at": at, "read_at": None if i % 3 else at}
                for i, (cid, mid, at, uid) in enumerate(rows)
            ],
        )  # fmt: skip
        if conn.dialect.name == "postgresql":
            for name in ("messages", "recipient_copies"):
                sequence = f"pg_get_serial_sequence('{name}', 'id')"
                top = f"(SELECT max(id) FROM {name})"  # noqa: S608 (our own table names)
                conn.execute(text(f"SELECT setval({sequence}, {top})"))
    picks["sally"], picks["tom"] = sally, tom
    return picks


# ------------------------------------------------------------------ timing


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))
    return ordered[k]


def timed(fn: Callable[[], Any], rounds: int) -> list[float]:
    for _ in range(3):
        fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def atimed(fn: Callable[[], Any], rounds: int) -> list[float]:
    for _ in range(3):
        await fn()
    out = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn()
        out.append((time.perf_counter() - t0) * 1000)
    return out


def report(name: str, values: list[float]) -> float:
    p95 = percentile(values, 95)
    flag = "" if p95 < 100 else "   <-- over 100 ms"
    print(f"  {name:<52} p50 {statistics.median(values):7.2f} ms   p95 {p95:7.2f} ms{flag}")
    return p95


def run_queries(runtime: Runtime, picks: dict[str, int], rounds: int) -> dict[str, float]:
    sally = picks["sally"]
    results: dict[str, float] = {}
    sessions = runtime.database.sessions
    print("references")
    with runtime.database.engine.connect() as conn:
        results["SELECT 1"] = report(
            "SELECT 1", timed(lambda: conn.execute(text("SELECT 1")).all(), rounds)
        )
        m = Message.__table__
        bare = (
            select(m.c.id)
            .where(m.c.user_id == sally, m.c.is_preview.is_(False))
            .order_by(m.c.created_at.desc(), m.c.id.desc())
            .limit(51)
        )
        results["bare page"] = report(
            "newest 50 ids (the index range alone)", timed(lambda: conn.execute(bare).all(), rounds)
        )

    def page(**kw: Any) -> Callable[[], Any]:
        def run() -> Any:
            with sessions() as s:
                return reading.mail_page(s, sally, **kw)

        return run

    print("queries (mail/reading.py, one session each)")
    first = page()()
    cases: list[tuple[str, Callable[[], Any]]] = [("list: first page", page())]
    for f in MailFilter:
        cases.append((f"list: filter {f.value}", page(mail_filter=f)))
    cases += [
        ("list: search a recipient (customer42.)", page(q="customer42.")),
        ("list: search a subject (Proposal 99999)", page(q="Proposal 99999")),
        ("list: search, no match", page(q="no-such-thing")),
        ("list: second page (cursor)", page(before=first.older_cursor)),
    ]
    for name, fn in cases:
        results[name] = report(name, timed(fn, rounds))

    def detail(mid: int) -> Callable[[], Any]:
        def run() -> Any:
            with sessions() as s:
                return reading.mail_detail(s, sally, mid, links=runtime.tracking)

        return run

    for key in ("quiet", "busy", "hammered"):
        if key in picks:
            name = f"detail: {key} email ({picks[key]})"
            results[name] = report(name, timed(detail(picks[key]), rounds))

    def rows() -> Any:
        with sessions() as s:
            return reading.mail_rows(s, sally, [picks.get("busy", 1)])

    def unread() -> Any:
        with sessions() as s:
            return notification_service.unread_count(s, sally)

    results["live: one row"] = report("live: one row (an activity wake)", timed(rows, rounds))
    results["bell: unread"] = report("bell: unread count", timed(unread, rounds))
    return results


SEARCHES = [
    ("a recipient", "customer42."),
    ("a subject", "Proposal 99999"),
    ("no match", "no-such-thing"),
    ("a common term", "example"),
    ("two characters", "zq"),
    ("FTS5 syntax", 'NEAR("x" y*)'),
    # Over 1,000 matches (every "Proposal 1..."), all among the oldest fifth: the road
    # that walks the newest emails until a page is full, about 80,000 of them.
    ("over 1,000 matches, all old", "proposal 1"),
]


def run_searches(runtime: Runtime, picks: dict[str, int], rounds: int) -> None:
    """Each search with the trigram indexes (migrations a3d5f7b9c1e2, d6a8c0e2f4b5), then
    without them (where FTS5's trigram tokenizer or pg_trgm is missing), in the same run."""
    sally = picks["sally"]
    sessions = runtime.database.sessions

    def search(q: str) -> Callable[[], Any]:
        def run() -> Any:
            with sessions() as s:
                return reading.mail_page(s, sally, q=q)

        return run

    print("search (mail/reading.py): with the search indexes, then without them")
    with_index = {
        q: report(f"indexed: {label} ({q})", timed(search(q), rounds)) for label, q in SEARCHES
    }
    if runtime.database.is_sqlite:
        found = reading._trigram_matches
        reading._trigram_matches = lambda session, search: None  # type: ignore[assignment]
    else:
        # Only this bench's own schema: the indexes go (committed) and come back if kept.
        # What remains is the road where pg_trgm is missing: a scan of the lowered copy
        # of the searched text (migration d6a8c0e2f4b5).
        with runtime.database.engine.begin() as conn:
            conn.execute(text("DROP INDEX IF EXISTS messages_search_text_trgm"))
            conn.execute(text("DROP INDEX IF EXISTS messages_search_bcc_trgm"))
    try:
        for label, q in SEARCHES:
            p95 = report(f"scan:    {label} ({q})", timed(search(q), rounds))
            print(f"{'':55}p95 indexed/scan {with_index[q] / p95:.2f}")
    finally:
        if runtime.database.is_sqlite:
            reading._trigram_matches = found  # type: ignore[assignment]
        else:
            with runtime.database.engine.begin() as conn:
                schema = conn.scalar(
                    text(
                        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n"
                        " ON n.oid = e.extnamespace WHERE e.extname = 'pg_trgm'"
                    )
                )
                if schema is not None:
                    ops = f'"{schema}".gin_trgm_ops'
                    conn.execute(
                        text(
                            "CREATE INDEX messages_search_text_trgm ON messages_search_text "
                            f"USING gin (search_text {ops})"
                        )
                    )
                    conn.execute(
                        text(
                            "CREATE INDEX messages_search_bcc_trgm ON recipient_copies "
                            f"USING gin (lower(address) {ops}) WHERE kind = 'bcc'"
                        )
                    )


async def run_pages(app: MailbeaconApp, picks: dict[str, int], rounds: int) -> None:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://bench.test") as c:
        page = await c.get("/sign-in")
        token = page.text.split('name="csrf_token" value="')[1].split('"')[0]
        r = await c.post(
            "/sign-in",
            data={"email": "sally@example.com", "password": PASSWORD, "csrf_token": token},
        )
        assert r.status_code == 303, r.text
        print("whole answers through the ASGI app (session, queries, template or JSON)")
        busy = picks.get("busy", 1)
        paths = [
            "/mail",
            "/mail?filter=opened",
            "/mail?filter=not_opened",
            f"/mail?q={quote('customer42.')}",
            f"/mail/{busy}",
            f"/mail/{picks['hammered']}",
            "/api/mail",
            "/api/mail?filter=clicked",
            f"/api/mail/{busy}",
            f"/api/mail/{picks['hammered']}/events",
            "/assistant",
        ]
        for path in paths:

            async def get(path: str = path) -> None:
                response = await c.get(path)
                assert response.status_code == 200, (path, response.status_code)

            report(f"GET {path}", await atimed(get, rounds))


# ------------------------------------------------------------------ main


def _databases(args: argparse.Namespace) -> Iterator[tuple[str, str]]:
    if not args.database_url:
        folder = Path(args.data_dir or tempfile.mkdtemp(prefix="mb-bench-"))
        folder.mkdir(parents=True, exist_ok=True)
        yield str(folder), f"sqlite:///{folder / 'mailbeacon.db'}"
        return
    schema = args.schema or f"mb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(args.database_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    sep = "&" if "?" in args.database_url else "?"
    try:
        yield (
            tempfile.mkdtemp(prefix="mb-bench-"),
            (f"{args.database_url}{sep}options={quote(f'-csearch_path={schema}')}"),
        )
    finally:
        if not args.keep:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        else:
            print(f"kept schema {schema}")
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--database-url", default="")
    parser.add_argument("--schema", default="", help="PostgreSQL schema (with --keep: reuse)")
    parser.add_argument("--keep", action="store_true", help="keep the seeded PostgreSQL schema")
    parser.add_argument("--data-dir", default="", help="SQLite: this folder (reused if seeded)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    for data_dir, url in _databases(args):
        upgrade(url)
        settings = Settings(DATA_DIR=Path(data_dir), DATABASE_URL=url, DEMO_SMTP_PORT=0,
                            RUN_WORKER=False)  # fmt: skip
        runtime = Runtime.from_settings(settings)
        backend = runtime.database.engine.dialect.name
        with runtime.database.engine.connect() as conn:
            existing = conn.scalar(select(func.count()).select_from(Message.__table__)) or 0
        t0 = time.perf_counter()
        if existing:
            print(f"{backend}: reusing {existing:,} emails")
            with runtime.database.engine.connect() as conn:
                m = Message.__table__
                sally = conn.scalar(select(func.min(m.c.user_id)))
                hammered = conn.scalar(
                    select(m.c.id).order_by(m.c.machine_event_count.desc()).limit(1)
                )
                busy = conn.scalar(
                    select(m.c.id)
                    .where(m.c.user_id == sally, m.c.open_count.between(3, 12))
                    .limit(1)
                )
            picks = {
                "sally": int(sally or 1),
                "hammered": int(hammered or 1),
                "busy": int(busy or 1),
            }
        else:
            print(f"{backend}: seeding {args.messages:,} emails and {args.events:,} events")
            picks = seed(runtime, args.messages, args.events, random.Random(args.seed))
            if backend == "postgresql":
                with runtime.database.engine.connect() as conn:
                    conn.execute(text("ANALYZE"))
                    conn.commit()
            print(f"  seeded in {time.perf_counter() - t0:.0f} s")
        run_queries(runtime, picks, args.rounds)
        run_searches(runtime, picks, args.rounds)
        app = MailbeaconApp(runtime)
        asyncio.run(run_pages(app, picks, args.rounds))
        runtime.database.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
