"""What the privacy domain adds to the hit pipeline: the gate's query per batch and the
possibly-forwarded observer, against the same pipeline without them, in one run.

Prepares ``--messages`` emails of ``--copies`` recipient copies in an organisation
that tracks individually (consent granted to every recipient, so the gate keeps
every hit whole and does all its work), then stores ``--hits`` hits in batches of
``--batch`` through:

1. reference: the hit pipeline without gate or privacy observer;
2. mailbeacon: the pipeline as ``Runtime`` builds it (gate + notifications + forwarded
   opens); the reference also runs the notification observer, so the difference
   is the privacy domain's alone.

Each run starts from the same emails with no events. Prints hits per second.

    .venv/bin/python bench/privacy_gate.py
    .venv/bin/python bench/privacy_gate.py --database postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sqlalchemy import create_engine, delete, insert, select, text, update  # noqa: E402

from mailbeacon.config import Settings  # noqa: E402
from mailbeacon.db import normalise_url  # noqa: E402
from mailbeacon.kit.clock import utcnow  # noqa: E402
from mailbeacon.migrate import upgrade  # noqa: E402
from mailbeacon.models import (  # noqa: E402
    Contact,
    CopyStatus,
    LinkClickStat,
    Message,
    Notification,
    Organisation,
    RecipientCopy,
    TrackingEvent,
    User,
)
from mailbeacon.notify.observer import NotificationObserver  # noqa: E402
from mailbeacon.runtime import Runtime  # noqa: E402
from mailbeacon.tracking.hits import Hit  # noqa: E402
from mailbeacon.tracking.pipeline import HitPipeline  # noqa: E402

AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)",
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17928; Pro)",
]


def _database(url: str | None, folder: Path) -> tuple[str, str | None]:
    """The database to run on, and the PostgreSQL schema made for it (dropped after)."""
    if url is None:
        return f"sqlite:///{folder / 'bench.db'}", None
    schema = f"mb_bench_{uuid.uuid4().hex[:8]}"
    admin = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    admin.dispose()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options={quote(f'-csearch_path={schema}')}", schema


def _drop(url: str, schema: str) -> None:
    admin = create_engine(normalise_url(url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


def _prepare(runtime: Runtime, messages: int, copies: int) -> list[int]:
    with runtime.database.unit_of_work() as s:
        org = Organisation(name="Bench", consent_required=True)
        s.add(org)
        s.flush()
        user = User(organisation_id=org.id, email="bench@example.com", role="admin")
        s.add(user)
        s.flush()
        now = utcnow()
        copy_ids: list[int] = []
        for m in range(messages):
            message = Message(user_id=user.id, subject=f"m{m}", sent_at=now)
            s.add(message)
            s.flush()
            rows = []
            for c in range(copies):
                contact = Contact(
                    organisation_id=org.id, email=f"r{m}-{c}@example.org", consent_state="granted"
                )
                s.add(contact)
                s.flush()
                rows.append(
                    {
                        "message_id": message.id,
                        "address": contact.email,
                        "decision": "tracked",
                        "status": CopyStatus.SENT,
                        "sent_at": now,
                        "contact_id": contact.id,
                    }
                )
            s.execute(insert(RecipientCopy), rows)
        copy_ids = list(s.scalars(select(RecipientCopy.id)))
    return copy_ids


def _hits(copy_ids: list[int], n: int, seed: int) -> list[Hit]:
    rng = random.Random(seed)
    start = time.time() - 3600
    return [
        Hit(
            uid=uuid.uuid4().hex,
            kind="open",
            copy_id=rng.choice(copy_ids),
            link_position=None,
            occurred_at=start + i * 0.01,
            user_agent=rng.choice(AGENTS),
            ip_prefix=f"198.51.{rng.randrange(256)}.0/24",
            network=None,
            is_head=False,
            prefetch_hint=None,
            viewer_user_id=None,
        )
        for i in range(n)
    ]


def _reset(runtime: Runtime) -> None:
    with runtime.database.unit_of_work() as s:
        for model in (TrackingEvent, LinkClickStat, Notification):
            s.execute(delete(model))
        zero = {
            "open_count": 0, "click_count": 0, "machine_event_count": 0, "forwarded_open_count": 0,
            "first_open_at": None, "last_open_at": None, "first_click_at": None,
            "last_click_at": None,
        }  # fmt: skip
        s.execute(update(RecipientCopy).values(last_event_at=None, **zero))
        s.execute(update(Message).values(**zero))


def _run(pipeline: HitPipeline, hits: list[Hit], batch: int) -> float:
    started = time.perf_counter()
    for i in range(0, len(hits), batch):
        pipeline.process(hits[i : i + batch])
    return len(hits) / (time.perf_counter() - started)


def _measure(
    args: argparse.Namespace, url: str, folder: Path
) -> tuple[dict[str, list[float]], int]:
    upgrade(url)
    runtime = Runtime.from_settings(Settings(DATA_DIR=folder / "data", DATABASE_URL=url))
    copy_ids = _prepare(runtime, args.messages, args.copies)
    reference = HitPipeline(runtime.database, runtime.policy, [NotificationObserver()])
    results: dict[str, list[float]] = {"reference": [], "mailbeacon": []}
    for round_ in range(args.rounds):
        hits = _hits(copy_ids, args.hits, round_)
        for name, pipeline in (("reference", reference), ("mailbeacon", runtime.pipeline)):
            _reset(runtime)
            results[name].append(_run(pipeline, hits, args.batch))
    runtime.database.dispose()
    return results, len(copy_ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--copies", type=int, default=10)
    parser.add_argument("--hits", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--database")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url, schema = _database(args.database, Path(folder))
        try:
            results, copies = _measure(args, url, Path(folder))
        finally:
            if args.database and schema:
                _drop(args.database, schema)
    backend = "PostgreSQL" if args.database else "SQLite"
    print(
        f"{backend}, {args.hits} hits on {copies} copies, batches of {args.batch}, "
        f"best of {args.rounds}:"
    )
    best_ref, best = max(results["reference"]), max(results["mailbeacon"])
    print(f"  reference (no gate, no privacy observer): {best_ref:10,.0f} hits/s")
    print(f"  mailbeacon (gate + forwarded opens):       {best:10,.0f} hits/s")
    print(f"  ratio: {best / best_ref:.2f}")


if __name__ == "__main__":
    main()
