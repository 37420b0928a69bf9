"""Plain factories for hits on the tracking edge, and real agents that make them."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from mailbeacon.notify.live import LiveUpdate
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
SCANNER = "python-requests/2.32.3"

_seq = [0]


def hit(
    copy_id: int,
    kind: str = "open",
    *,
    at: float | None = None,
    ua: str = CHROME,
    ip_prefix: str = "203.0.113.0/24",
    network: str | None = None,
    position: int | None = None,
    viewer: int | None = None,
    head: bool = False,
) -> Hit:
    _seq[0] += 1
    return Hit(
        uid=f"{time.time_ns():016x}{_seq[0]:016x}",  # 32 hex digits, as the edge mints
        kind=kind,
        copy_id=copy_id,
        link_position=position,
        occurred_at=time.time() if at is None else at,
        user_agent=ua,
        ip_prefix=ip_prefix,
        network=network,
        is_head=head,
        prefetch_hint=None,
        viewer_user_id=viewer,
    )


@dataclass(slots=True)
class Recorded(BatchResult):
    """A batch's result, and whom its commit woke (user id -> message ids)."""

    wake: dict[int, set[int]] = field(default_factory=dict)


def record(runtime: Runtime, *hits: Hit) -> Recorded:
    """Store hits as the edge's ingest does: the whole pipeline, observers included."""
    dispatched: list[object] = []
    deliver = runtime.database.dispatch

    def capture(events: list[object]) -> None:
        dispatched.extend(events)
        deliver(events)

    runtime.database.dispatch = capture
    try:
        result = runtime.pipeline.process(list(hits))
    finally:
        runtime.database.dispatch = deliver
    recorded = Recorded(
        written=result.written,
        skipped_duplicates=result.skipped_duplicates,
        unknown_copies=result.unknown_copies,
        labels=result.labels,
        anonymous=result.anonymous,
        withheld=result.withheld,
    )
    for event in dispatched:
        if isinstance(event, LiveUpdate):
            for user_id, message_ids in event.wake.items():
                recorded.wake.setdefault(user_id, set()).update(message_ids or ())
    return recorded
