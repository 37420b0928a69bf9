"""The pipeline labels a batch as classify_hit labels each hit given the copy's history.

``classify_batch`` looks up the request's part of the verdict in a cache and reads
a copy's history only for hits timing may still change; this checks it against
the plain rule (every hit through ``classify_hit`` with every earlier hit of its
copy), stored history and hits of the same batch included.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.models.event import EventKind, EventLabel
from mailbeacon.tracking.classify import HitSignals, Policy, PriorHit, Verdict, classify_hit
from mailbeacon.tracking.hit_store import CopyContext, RecentEvent
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.pipeline import classify_batch, source_key
from tests.tracking.agent_strings import CHROME, GMAIL_PREFETCHER, GMAIL_PROXY, THUNDERBIRD

SENT = 1_000_000.0
COPIES = {
    1: CopyContext(10, 7, datetime.fromtimestamp(SENT, UTC), None),
    2: CopyContext(20, 8, datetime.fromtimestamp(SENT, UTC), None, via_demo_mailbox=True),
    3: CopyContext(30, None, None, None),
}
AGENTS = [CHROME, THUNDERBIRD, GMAIL_PROXY, GMAIL_PREFETCHER, "Mozilla/5.0", "curl/8.5.0", ""]
POLICY = Policy(too_fast_seconds=5, burst_seconds=5, burst_links=2, duplicate_seconds=10)

hits = st.builds(
    Hit,
    uid=st.uuids().map(lambda u: u.hex),
    kind=st.sampled_from([EventKind.OPEN, EventKind.CLICK]),
    copy_id=st.sampled_from([1, 2, 3, 4]),  # 4: no such copy
    link_position=st.none() | st.integers(0, 3),
    occurred_at=st.floats(SENT - 5, SENT + 60),
    user_agent=st.sampled_from(AGENTS),
    ip_prefix=st.sampled_from([None, "203.0.113.0/24", "198.51.100.0/24"]),
    network=st.sampled_from([None, "apple", "google", "mimecast"]),
    is_head=st.booleans(),
    prefetch_hint=st.sampled_from([None, "prefetch", "nothing"]),
    viewer_user_id=st.sampled_from([None, 7, 8]),
)
stored = st.builds(
    RecentEvent,
    at=st.floats(SENT - 20, SENT),
    kind=st.sampled_from([EventKind.OPEN, EventKind.CLICK]),
    link_position=st.none() | st.integers(0, 3),
    ip_prefix=st.sampled_from([None, "203.0.113.0/24"]),
    user_agent=st.sampled_from([CHROME, THUNDERBIRD]),
    label=st.sampled_from([EventLabel.HUMAN, EventLabel.SCANNER]),
)


def _one_by_one(
    batch: list[Hit], recent: dict[int, list[RecentEvent]]
) -> list[tuple[str, Verdict]]:
    seen: dict[int, list[tuple[float, str, int | None, str, EventLabel]]] = {
        cid: [
            (e.at, e.kind, e.link_position, source_key(e.ip_prefix, e.user_agent), e.label)
            for e in events
        ]
        for cid, events in recent.items()
    }
    out = []
    for hit in sorted(batch, key=lambda h: h.occurred_at):
        copy = COPIES.get(hit.copy_id)
        if copy is None:
            continue
        after = (
            None
            if copy.sent_at is None or copy.via_demo_mailbox
            else hit.occurred_at - copy.sent_at.timestamp()
        )
        key = source_key(hit.ip_prefix, hit.user_agent)
        signals = HitSignals(
            kind=hit.kind,
            user_agent=hit.user_agent,
            network=hit.network,
            is_head=hit.is_head,
            prefetch_hint=hit.prefetch_hint,
            seconds_after_send=after,
            viewer_is_sender=hit.viewer_user_id is not None
            and hit.viewer_user_id == copy.sender_id,
            link_position=hit.link_position,
            source_key=key,
        )
        history = [
            PriorHit(kind, position, source, hit.occurred_at - at, label)
            for at, kind, position, source, label in seen.get(hit.copy_id, [])
            if at <= hit.occurred_at
        ]
        verdict = classify_hit(signals, history, POLICY)
        seen.setdefault(hit.copy_id, []).append(
            (hit.occurred_at, hit.kind, hit.link_position, key, verdict.label)
        )
        out.append((hit.uid, verdict))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(hits, max_size=40), st.lists(stored, max_size=6))
def test_a_batch_is_labelled_as_each_hit_is_with_its_history(
    batch: list[Hit], history: list[RecentEvent]
) -> None:
    recent = {1: sorted(history, key=lambda e: e.at)} if history else {}
    classified, unknown = classify_batch(batch, COPIES, recent, POLICY)
    assert [(c.hit.uid, c.verdict) for c in classified] == _one_by_one(batch, recent)
    assert unknown == sum(1 for h in batch if h.copy_id not in COPIES)
