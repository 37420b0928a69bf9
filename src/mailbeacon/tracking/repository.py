"""Every query of the tracking domain: the batch writer and the event readers."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, select

from mailbeacon.models import (
    EventKind,
    EventLabel,
    LinkClickStat,
    Message,
    RecipientCopy,
    TrackingEvent,
)
from mailbeacon.models.event import PERSON_LABELS
from mailbeacon.notify.service import notifications_for_batch
from mailbeacon.tracking.classify import HitSignals, Policy, PriorHit, classify_hit
from mailbeacon.tracking.event_sql import EventSql, event_sql
from mailbeacon.tracking.hits import Hit

log = logging.getLogger(__name__)

_events = TrackingEvent.__table__
_copies = RecipientCopy.__table__
_messages = Message.__table__
_link_stats = LinkClickStat.__table__


@dataclass(slots=True)
class _Figures:
    """What one batch adds to one copy (or one message)."""

    opens: int = 0
    clicks: int = 0
    machine: int = 0
    first_open: datetime | None = None
    last_open: datetime | None = None
    first_click: datetime | None = None
    last_click: datetime | None = None
    last_event: datetime | None = None

    def add(self, kind: str, person: bool, at: datetime) -> None:
        self.last_event = at if self.last_event is None else max(self.last_event, at)
        if not person:
            self.machine += 1
        elif kind == EventKind.OPEN:
            self.opens += 1
            self.first_open = at if self.first_open is None else min(self.first_open, at)
            self.last_open = at if self.last_open is None else max(self.last_open, at)
        else:
            self.clicks += 1
            self.first_click = at if self.first_click is None else min(self.first_click, at)
            self.last_click = at if self.last_click is None else max(self.last_click, at)

    def params(self, key: int, sql: EventSql, *, with_last_event: bool) -> tuple[Any, ...]:
        return (
            self.opens,
            self.clicks,
            self.machine,
            *sql.ts_param(self.first_open),
            *sql.ts_param(self.last_open),
            *sql.ts_param(self.first_click),
            *sql.ts_param(self.last_click),
            *(sql.ts_param(self.last_event) if with_last_event else ()),
            key,
        )


@dataclass(slots=True)
class _LinkFigures:
    clicks: int = 0
    machine: int = 0
    first: datetime | None = None
    last: datetime | None = None


@dataclass(slots=True)
class WriteResult:
    written: int = 0
    skipped_duplicates: int = 0
    unknown_copies: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    # Senders with new activity -> their messages that have it (notify/live.py);
    # published to this process's live streams after commit.
    wake: dict[int, set[int]] = field(default_factory=dict)


def source_key(hit: Hit) -> str:
    return f"{hit.ip_prefix or '-'}|{hit.user_agent}"


# Burst and duplicate rules look only at the most recent hits of a copy; a copy
# hammered by a scanner must not make every batch read its whole history.
RECENT_PER_COPY = 8


def _chunks(seq: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


@dataclass(frozen=True, slots=True)
class CopyContext:
    """What the writer needs to know about a copy to classify and attribute a hit."""

    message_id: int
    user_id: int | None
    sent_at: datetime | None
    last_event_at: datetime | None
    # Delivered by the built-in demo mailbox: loopback to a page a person reads,
    # with no security gateway in between, so "too soon after sending" means
    # nothing there (and a newcomer trying the product opens it within seconds).
    via_demo_mailbox: bool = False


def write_hits(
    engine: Engine, hits: list[Hit], policy: Policy, *, replay: bool = False
) -> WriteResult:
    """Classify a batch of hits and store them with the figures, in one transaction.

    With ``replay`` set, hits whose uid is already stored are skipped, which is
    what makes a spool replay exactly-once.
    """
    result = WriteResult()
    sql = event_sql(engine.dialect.name)
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        if replay:
            seen: set[str] = set()
            for chunk in _chunks([h.uid for h in hits]):
                seen.update(r[0] for r in conn.exec_driver_sql(*sql.stored_uids(chunk)))
            result.skipped_duplicates = sum(1 for h in hits if h.uid in seen)
            hits = [h for h in hits if h.uid not in seen]
        if not hits:
            return result
        hits = sorted(hits, key=lambda h: h.occurred_at)
        copies: dict[int, CopyContext] = {}
        for chunk in _chunks(sorted({h.copy_id for h in hits})):
            for cid, mid, c_sent, last_event, uid, m_sent, demo in conn.exec_driver_sql(
                *sql.copy_context(chunk)
            ):
                copies[cid] = CopyContext(
                    mid,
                    uid,
                    sql.read_ts(c_sent) or sql.read_ts(m_sent),
                    sql.read_ts(last_event),
                    bool(demo),
                )

        window = max(policy.burst_seconds, policy.duplicate_seconds)
        since = datetime.fromtimestamp(hits[0].occurred_at - window, UTC)
        prior: dict[int, list[tuple[float, str, int | None, str, EventLabel]]] = defaultdict(list)
        # Only copies hit within the window can have history that matters; most
        # hits are a copy's first in a while, and skip this query.
        recently_hit = [
            cid
            for cid, c in copies.items()
            if c.last_event_at is not None and c.last_event_at >= since
        ]
        for chunk in _chunks(recently_hit):
            for cid, at, kind, pos, prefix, ua, label in conn.exec_driver_sql(
                *sql.recent_events(chunk, since, RECENT_PER_COPY)
            ):
                when = sql.read_ts(at)
                assert when is not None
                prior[cid].append(
                    (when.timestamp(), kind, pos, f"{prefix or '-'}|{ua}", EventLabel(label))
                )

        event_rows: list[dict[str, Any]] = []
        copy_figs: dict[int, _Figures] = defaultdict(_Figures)
        message_figs: dict[int, _Figures] = defaultdict(_Figures)
        link_figs: dict[tuple[int, int], _LinkFigures] = defaultdict(_LinkFigures)
        recorded_at = datetime.now(UTC)
        for hit in hits:
            copy = copies.get(hit.copy_id)
            if copy is None:
                # The copy was erased (or never existed in this database): its
                # data must not come back.
                result.unknown_copies += 1
                continue
            after_send = (
                None
                if copy.sent_at is None or copy.via_demo_mailbox
                else hit.occurred_at - copy.sent_at.timestamp()
            )
            key = source_key(hit)
            signals = HitSignals(
                kind=hit.kind,
                user_agent=hit.user_agent,
                network=hit.network,
                is_head=hit.is_head,
                prefetch_hint=hit.prefetch_hint,
                seconds_after_send=after_send,
                viewer_is_sender=(
                    hit.viewer_user_id is not None and hit.viewer_user_id == copy.user_id
                ),
                link_position=hit.link_position,
                source_key=key,
            )
            history = [
                PriorHit(
                    kind=k,
                    link_position=lp,
                    source_key=sk,
                    seconds_before=hit.occurred_at - at,
                    label=lb,
                )
                for at, k, lp, sk, lb in prior[hit.copy_id]
                if at <= hit.occurred_at
            ]
            verdict = classify_hit(signals, history, policy)
            prior[hit.copy_id].append(
                (hit.occurred_at, hit.kind, hit.link_position, key, verdict.label)
            )
            at = datetime.fromtimestamp(hit.occurred_at, UTC)
            event_rows.append(
                {
                    "uid": hit.uid,
                    "copy_id": hit.copy_id,
                    "message_id": copy.message_id,
                    "kind": hit.kind,
                    "link_position": hit.link_position,
                    "occurred_at": at,
                    "recorded_at": recorded_at,
                    "label": str(verdict.label),
                    "reason": verdict.reason[:300],
                    "user_agent": hit.user_agent,
                    "ip_prefix": hit.ip_prefix,
                    "network": hit.network,
                    "is_head": hit.is_head,
                    "prefetch_hint": hit.prefetch_hint,
                    "viewer_user_id": hit.viewer_user_id,
                }
            )
            person = verdict.label in PERSON_LABELS
            copy_figs[hit.copy_id].add(hit.kind, person, at)
            message_figs[copy.message_id].add(hit.kind, person, at)
            if hit.kind == EventKind.CLICK and hit.link_position is not None:
                lf = link_figs[(hit.copy_id, hit.link_position)]
                if person:
                    lf.clicks += 1
                    lf.first = at if lf.first is None else min(lf.first, at)
                    lf.last = at if lf.last is None else max(lf.last, at)
                else:
                    lf.machine += 1
            result.labels[verdict.label] = result.labels.get(verdict.label, 0) + 1

        if not event_rows:
            return result
        stamp = sql.ts(recorded_at)
        conn.exec_driver_sql(sql.insert_event, [sql.event_row(e, stamp) for e in event_rows])
        conn.exec_driver_sql(
            sql.update_copy,
            # Rows are locked in id order so that concurrent writers never deadlock.
            [f.params(k, sql, with_last_event=True) for k, f in sorted(copy_figs.items())],
        )
        conn.exec_driver_sql(
            sql.update_message,
            [f.params(k, sql, with_last_event=False) for k, f in sorted(message_figs.items())],
        )
        if link_figs:
            conn.exec_driver_sql(
                sql.upsert_link,
                [
                    (cid, pos, lf.clicks, lf.machine, sql.ts(lf.first), sql.ts(lf.last))
                    for (cid, pos), lf in sorted(link_figs.items())
                ],
            )
        # notifications hook
        result.wake = notifications_for_batch(conn, event_rows, copies)
        result.written = len(event_rows)
    return result


def _ts(value: datetime) -> float:
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).timestamp()


def latest_events(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The newest events, newest first, for operators (`mailbeacon events`)."""
    rows = conn.execute(select(_events).order_by(_events.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def count_events(conn: Connection) -> int:
    return int(conn.scalar(select(func.count()).select_from(_events)) or 0)
