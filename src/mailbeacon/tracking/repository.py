"""Every query of the tracking domain: the batch writer and the event readers."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, case, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mailbeacon.models import EventKind, LinkClickStat, Message, RecipientCopy, TrackingEvent
from mailbeacon.models.base import UTCDateTime
from mailbeacon.models.event import PERSON_LABELS
from mailbeacon.tracking.classify import HitSignals, Policy, PriorHit, classify_hit
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

    def add(self, kind: str, person: bool, at: datetime) -> None:
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

    def params(self, key: int) -> dict[str, Any]:
        return {
            "k_id": key,
            "d_opens": self.opens,
            "d_clicks": self.clicks,
            "d_machine": self.machine,
            "f_open": self.first_open,
            "l_open": self.last_open,
            "f_click": self.first_click,
            "l_click": self.last_click,
        }


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


def source_key(hit: Hit) -> str:
    return f"{hit.ip_prefix or '-'}|{hit.user_agent}"


def _earliest(col: Any, name: str) -> Any:
    p = bindparam(name, type_=UTCDateTime())
    return case((p.is_(None), col), ((col.is_(None)) | (col > p), p), else_=col)


def _latest(col: Any, name: str) -> Any:
    p = bindparam(name, type_=UTCDateTime())
    return case((p.is_(None), col), ((col.is_(None)) | (col < p), p), else_=col)


def _figures_update(table: Any) -> Any:
    c = table.c
    return (
        update(table)
        .where(c.id == bindparam("k_id"))
        .values(
            open_count=c.open_count + bindparam("d_opens"),
            click_count=c.click_count + bindparam("d_clicks"),
            machine_event_count=c.machine_event_count + bindparam("d_machine"),
            first_open_at=_earliest(c.first_open_at, "f_open"),
            last_open_at=_latest(c.last_open_at, "l_open"),
            first_click_at=_earliest(c.first_click_at, "f_click"),
            last_click_at=_latest(c.last_click_at, "l_click"),
        )
    )


_COPY_UPDATE = _figures_update(_copies)
_MESSAGE_UPDATE = _figures_update(_messages)


def _upsert_link_stats(conn: Connection, rows: list[dict[str, Any]]) -> None:
    dialect = conn.dialect.name
    ins = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(_link_stats)
    ex = ins.excluded
    c = _link_stats.c
    stmt = ins.on_conflict_do_update(
        index_elements=[c.copy_id, c.position],
        set_={
            "click_count": c.click_count + ex.click_count,
            "machine_click_count": c.machine_click_count + ex.machine_click_count,
            "first_click_at": case(
                (ex.first_click_at.is_(None), c.first_click_at),
                ((c.first_click_at.is_(None)) | (c.first_click_at > ex.first_click_at),
                 ex.first_click_at),
                else_=c.first_click_at,
            ),
            "last_click_at": case(
                (ex.last_click_at.is_(None), c.last_click_at),
                ((c.last_click_at.is_(None)) | (c.last_click_at < ex.last_click_at),
                 ex.last_click_at),
                else_=c.last_click_at,
            ),
        },
    )
    conn.execute(stmt, rows)


def _chunks(seq: Sequence[Any], size: int = 500) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def write_hits(engine: Engine, hits: list[Hit], policy: Policy, *, replay: bool = False) -> WriteResult:
    """Classify a batch of hits and store them with the figures, in one transaction.

    With ``replay`` set, hits whose uid is already stored are skipped, which is
    what makes a spool replay exactly-once.
    """
    result = WriteResult()
    with engine.connect().execution_options(sqlite_immediate=True) as conn, conn.begin():
        if replay:
            seen: set[str] = set()
            for chunk in _chunks([h.uid for h in hits]):
                seen.update(conn.scalars(select(_events.c.uid).where(_events.c.uid.in_(chunk))))
            result.skipped_duplicates = sum(1 for h in hits if h.uid in seen)
            hits = [h for h in hits if h.uid not in seen]
        if not hits:
            return result
        hits = sorted(hits, key=lambda h: h.occurred_at)
        copy_ids = sorted({h.copy_id for h in hits})
        copies: dict[int, Any] = {}
        for chunk in _chunks(copy_ids):
            rows = conn.execute(
                select(
                    _copies.c.id,
                    _copies.c.message_id,
                    _copies.c.sent_at,
                    _messages.c.user_id,
                    _messages.c.sent_at.label("message_sent_at"),
                )
                .join(_messages, _messages.c.id == _copies.c.message_id)
                .where(_copies.c.id.in_(chunk))
            )
            copies.update({r.id: r for r in rows})

        window = max(policy.burst_seconds, policy.duplicate_seconds)
        since = datetime.fromtimestamp(hits[0].occurred_at - window, UTC)
        prior: dict[int, list[tuple[float, str, int | None, str, str]]] = defaultdict(list)
        for chunk in _chunks(list(copies)):
            for r in conn.execute(
                select(
                    _events.c.copy_id,
                    _events.c.occurred_at,
                    _events.c.kind,
                    _events.c.link_position,
                    _events.c.ip_prefix,
                    _events.c.user_agent,
                    _events.c.label,
                ).where(_events.c.copy_id.in_(chunk), _events.c.occurred_at >= since)
            ):
                at = r.occurred_at.replace(tzinfo=UTC) if r.occurred_at.tzinfo is None else r.occurred_at
                key = f"{r.ip_prefix or '-'}|{r.user_agent}"
                prior[r.copy_id].append((at.timestamp(), r.kind, r.link_position, key, r.label))

        event_rows: list[dict[str, Any]] = []
        copy_figs: dict[int, _Figures] = defaultdict(_Figures)
        message_figs: dict[int, _Figures] = defaultdict(_Figures)
        link_figs: dict[tuple[int, int], _LinkFigures] = defaultdict(_LinkFigures)
        for hit in hits:
            copy = copies.get(hit.copy_id)
            if copy is None:
                # The copy was erased (or never existed in this database): its
                # data must not come back.
                result.unknown_copies += 1
                continue
            sent_at = copy.sent_at or copy.message_sent_at
            after_send = None if sent_at is None else hit.occurred_at - _ts(sent_at)
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
                PriorHit(kind=k, link_position=lp, source_key=sk,
                         seconds_before=hit.occurred_at - at, label=lb)
                for at, k, lp, sk, lb in prior[hit.copy_id]
                if at <= hit.occurred_at
            ]
            verdict = classify_hit(signals, history, policy)
            prior[hit.copy_id].append((hit.occurred_at, hit.kind, hit.link_position, key, verdict.label))
            at = datetime.fromtimestamp(hit.occurred_at, UTC)
            event_rows.append(
                {
                    "uid": hit.uid,
                    "copy_id": hit.copy_id,
                    "message_id": copy.message_id,
                    "kind": hit.kind,
                    "link_position": hit.link_position,
                    "occurred_at": at,
                    "recorded_at": datetime.now(UTC),
                    "label": verdict.label,
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
        conn.execute(insert(_events), event_rows)
        conn.execute(_COPY_UPDATE, [f.params(k) for k, f in copy_figs.items()])
        conn.execute(_MESSAGE_UPDATE, [f.params(k) for k, f in message_figs.items()])
        if link_figs:
            _upsert_link_stats(
                conn,
                [
                    {
                        "copy_id": cid,
                        "position": pos,
                        "click_count": lf.clicks,
                        "machine_click_count": lf.machine,
                        "first_click_at": lf.first,
                        "last_click_at": lf.last,
                    }
                    for (cid, pos), lf in link_figs.items()
                ],
            )
        result.written = len(event_rows)
    return result


def _ts(value: datetime) -> float:
    return (value.replace(tzinfo=UTC) if value.tzinfo is None else value).timestamp()


def latest_events(conn: Connection, limit: int) -> list[dict[str, Any]]:
    """The newest events, newest first, for operators (`mailbeacon events`)."""
    rows = conn.execute(select(_events).order_by(_events.c.id.desc()).limit(limit))
    return [dict(r._mapping) for r in rows]


def count_events(conn: Connection) -> int:
    from sqlalchemy import func

    return int(conn.scalar(select(func.count()).select_from(_events)) or 0)
