"""The hit pipeline: load context -> classify (pure) -> apply (one transaction) -> observers.

Every hit the edge acknowledged goes through here, in batches, whether it comes
straight from the edge or from a replay after the database was away:

1. **load**: the copies the hits belong to, and the recent events of the copies
   hit lately (what the burst and duplicate rules compare against);
2. **classify**: :func:`classify_batch` labels each hit with the classifier;
   pure, no database, so it is tested on plain values;
3. **apply**: the events are inserted and the figures of copies, messages and
   links updated, in the same transaction;
4. **observers**: typed :class:`StoredEvent` values go to every registered
   :class:`HitObserver` (notifications, webhooks), still inside the transaction.

Just before the events are written, the **forwarded check** (a
:class:`ForwardedCheck`, the privacy domain's rule) says which of the batch's
opens were possibly forwarded: the mark goes into the rows and figures as they
are written.

Between loading and classifying, the **gate** (a :class:`HitGate`, the privacy
domain's policy) rules how much of each copy's hits may be kept: everything,
everything but the network prefix, anonymous counts on the email only, or
nothing at all (see :class:`Treatment`). The edge has answered already either way.

A hit whose copy does not exist (erased, or from another installation's
database) is dropped: its data must not come back.
"""

from __future__ import annotations

import operator
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.db import Database
from mailbeacon.kit.metrics import HITS_STORED, INGEST_BATCH_HITS
from mailbeacon.models import EventKind, EventLabel
from mailbeacon.tracking import hit_store
from mailbeacon.tracking.classify import (
    HitSignals,
    Policy,
    PriorHit,
    Verdict,
    judge_request,
    judge_timing,
)
from mailbeacon.tracking.events import (
    BatchResult,
    ForwardedCheck,
    HitGate,
    HitObserver,
    StoredEvent,
    Treatment,
)
from mailbeacon.tracking.hit_store import CopyContext, RecentEvent
from mailbeacon.tracking.hits import Hit, kept_user_agent

# Burst and duplicate rules look only at the most recent hits of a copy; a copy
# hammered by a scanner must not make every batch read its whole history.
RECENT_PER_COPY = 8
# The reason column holds 300 characters.
REASON_CHARS = 300


def source_key(ip_prefix: str | None, user_agent: str) -> str:
    """What counts as "the same source" for the burst and duplicate rules."""
    return f"{ip_prefix or '-'}|{user_agent}"


@dataclass(frozen=True, slots=True)
class ClassifiedHit:
    hit: Hit
    copy: CopyContext
    verdict: Verdict


@dataclass(slots=True)
class _Prior:
    at: float
    kind: str
    link_position: int | None
    source: str
    label: EventLabel


def classify_batch(
    hits: Sequence[Hit],
    copies: dict[int, CopyContext],
    recent: dict[int, list[RecentEvent]],
    policy: Policy,
) -> tuple[list[ClassifiedHit], int]:
    """Label each hit, in the order they happened; returns them and how many had no copy.

    Each hit is judged against its copy's stored history and the hits before it
    in the same batch.
    """
    prior: dict[int, list[_Prior]] = defaultdict(list)
    for copy_id, events in recent.items():
        prior[copy_id] = [
            _Prior(e.at, e.kind, e.link_position, source_key(e.ip_prefix, e.user_agent), e.label)
            for e in events
        ]
    # The burst and duplicate rules look no further back than this: older hits are left
    # out of a hit's history, and a hit with none, not too fast, keeps its verdict.
    window = max(policy.burst_seconds, policy.duplicate_seconds)
    too_fast = policy.too_fast_seconds
    out: list[ClassifiedHit] = []
    unknown = 0
    for hit in sorted(hits, key=_OCCURRED_AT):
        copy = copies.get(hit.copy_id)
        if copy is None:
            unknown += 1
            continue
        at = hit.occurred_at
        key = source_key(hit.ip_prefix, hit.user_agent)
        by_sender = hit.viewer_user_id is not None and hit.viewer_user_id == copy.sender_id
        # What classify_hit does, in its two parts: the request's verdict is cached
        # (hits repeat a few agents and networks), and the copy's history is read
        # only for a hit whose verdict timing may still change.
        verdict, final = judge_request(
            hit.kind, hit.user_agent, hit.network, hit.is_head, hit.prefetch_hint, by_sender
        )
        earlier = prior[hit.copy_id]
        if not final:
            after_send = (
                None
                if copy.sent_at is None or copy.via_demo_mailbox
                else at - copy.sent_at.timestamp()
            )
            history = [
                PriorHit(
                    kind=p.kind,
                    link_position=p.link_position,
                    source_key=p.source,
                    seconds_before=at - p.at,
                    label=p.label,
                )
                for p in earlier
                if p.at <= at and at - p.at <= window
            ]
            if history or (after_send is not None and after_send < too_fast):
                signals = HitSignals(
                    kind=hit.kind,
                    user_agent=hit.user_agent,
                    network=hit.network,
                    is_head=hit.is_head,
                    prefetch_hint=hit.prefetch_hint,
                    seconds_after_send=after_send,
                    viewer_is_sender=by_sender,
                    link_position=hit.link_position,
                    source_key=key,
                )
                verdict = judge_timing(verdict, signals, history, policy)
        earlier.append(_Prior(at, hit.kind, hit.link_position, key, verdict.label))
        out.append(ClassifiedHit(hit, copy, verdict))
    return out, unknown


_OCCURRED_AT = operator.attrgetter("occurred_at")


class HitPipeline:
    """Stores batches of hits; thread-safe (each call is its own unit of work)."""

    def __init__(
        self,
        database: Database,
        policy: Policy,
        observers: Sequence[HitObserver] = (),
        gate: HitGate | None = None,
        forwarded: ForwardedCheck | None = None,
    ) -> None:
        self.database = database
        self.policy = policy
        self.observers = list(observers)
        self.gate = gate
        self.forwarded = forwarded

    def process(self, hits: Sequence[Hit], *, replay: bool = False) -> BatchResult:
        """Classify and store a batch in one transaction, observers included.

        With ``replay`` set, hits whose uid is stored already are skipped: that is
        what makes replaying a journal (or spool) exactly-once.
        """
        result = self._process(hits, replay)
        # Counted once committed: a batch that raised stored nothing.
        INGEST_BATCH_HITS.observe(len(hits))
        for label, count in result.labels.items():
            HITS_STORED.labels(label.value).inc(count)
        return result

    def _process(self, hits: Sequence[Hit], replay: bool) -> BatchResult:
        result = BatchResult()
        with self.database.unit_of_work() as session:
            conn = session.connection()
            if replay:
                seen = hit_store.stored_uids(conn, [h.uid for h in hits])
                result.skipped_duplicates = sum(1 for h in hits if h.uid in seen)
                hits = [h for h in hits if h.uid not in seen]
            if not hits:
                return result
            copies = hit_store.load_copies(conn, [h.copy_id for h in hits])
            hits, anonymous = self._screen(session, hits, copies, result)
            if not hits:
                return result
            window = max(self.policy.burst_seconds, self.policy.duplicate_seconds)
            since = datetime.fromtimestamp(min(h.occurred_at for h in hits) - window, UTC)
            # Only copies hit within the window can have history that matters; most
            # hits are a copy's first in a while and skip this query.
            lately = [
                cid
                for cid, c in copies.items()
                if c.last_event_at is not None and c.last_event_at >= since
            ]
            recent = hit_store.load_recent(conn, lately, since, RECENT_PER_COPY) if lately else {}
            classified, result.unknown_copies = classify_batch(hits, copies, recent, self.policy)
            if anonymous:
                counted = [c for c in classified if c.hit.copy_id in anonymous]
                classified = [c for c in classified if c.hit.copy_id not in anonymous]
                counted_at = datetime.now(UTC)
                hit_store.count_anonymously(conn, _stored_events(counted), counted_at)
                result.anonymous = len(counted)
            if not classified:
                return result
            events = _stored_events(classified)
            if self.forwarded is not None:
                marked = self.forwarded.possibly_forwarded(session, events)
                if marked:
                    events = [
                        replace(e, possibly_forwarded=True) if e.uid in marked else e
                        for e in events
                    ]
            rows = _event_rows(classified, events, datetime.now(UTC))
            hit_store.write_events(conn, rows, events)
            for observer in self.observers:
                observer.on_events_stored(session, events)
        result.written = len(events)
        result.labels.update(Counter(e.label for e in events))
        return result

    def _screen(
        self,
        session: Session,
        hits: Sequence[Hit],
        copies: dict[int, CopyContext],
        result: BatchResult,
    ) -> tuple[list[Hit], set[int]]:
        """The gate's step: the hits that may be kept (network prefixes dropped where the
        gate says so) and the copies whose hits count only anonymously."""
        if self.gate is None or not copies:
            return list(hits), set()
        treatments = self.gate.screen(session, list(copies))
        kept: list[Hit] = []
        anonymous: set[int] = set()
        for hit in hits:
            treatment = treatments.get(hit.copy_id, Treatment.FULL)
            if treatment == Treatment.NOTHING:
                result.withheld += 1
                continue
            if treatment == Treatment.ANONYMOUS:
                anonymous.add(hit.copy_id)
            elif treatment == Treatment.WITHOUT_NETWORK and hit.ip_prefix is not None:
                hit = replace(hit, ip_prefix=None)
            kept.append(hit)
        return kept, anonymous


def _stored_events(classified: Sequence[ClassifiedHit]) -> list[StoredEvent]:
    """The batch's events as typed values, in the order they happened."""
    events: list[StoredEvent] = []
    append = events.append
    at = datetime.fromtimestamp
    for item in classified:
        hit, verdict, copy = item.hit, item.verdict, item.copy
        append(
            StoredEvent(
                uid=hit.uid,
                copy_id=hit.copy_id,
                message_id=copy.message_id,
                sender_id=copy.sender_id,
                kind=_KINDS.get(hit.kind) or EventKind(hit.kind),
                label=verdict.label,
                reason=verdict.reason[:REASON_CHARS],
                link_position=hit.link_position,
                occurred_at=at(hit.occurred_at, UTC),
                ip_prefix=hit.ip_prefix,
                user_agent=kept_user_agent(hit.user_agent),
            )
        )
    return events


# A hit's kind as the enum: journal hits carry the enum already, others its string
# (equal to it, and hashed alike).
_KINDS = {k: k for k in EventKind}


def _event_rows(
    classified: Sequence[ClassifiedHit], events: Sequence[StoredEvent], recorded_at: datetime
) -> list[tuple[Any, ...]]:
    """The events as rows, in ``hit_store.EVENT_COLUMNS`` order."""
    return [
        (
            event.uid,
            event.copy_id,
            event.message_id,
            event.kind,
            event.link_position,
            event.occurred_at,
            recorded_at,
            event.label,
            event.reason,
            event.user_agent,
            event.ip_prefix,
            item.hit.network,
            item.hit.is_head,
            item.hit.prefetch_hint,
            item.hit.viewer_user_id,
            event.possibly_forwarded,
        )
        for item, event in zip(classified, events, strict=True)
    ]
