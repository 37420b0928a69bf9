"""The forwarded-open rule as its lookups apply it, against the rule walked out in full."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.models import EventKind, EventLabel
from mailbeacon.privacy.forwarding import _unlike_earlier
from mailbeacon.tracking.events import StoredEvent

T0 = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
PREFIXES = st.sampled_from(["198.51.100.0/24", "203.0.113.0/24", "192.0.2.0/24", None])
AGENTS = st.sampled_from(["Chrome", "Firefox", "Outlook", "Mail"])
MINUTES = st.integers(min_value=0, max_value=12)

Source = tuple[str | None, str, datetime]


def walked_out(opens: list[StoredEvent], sources: list[Source]) -> list[StoredEvent]:
    """Every stored source and every earlier unmarked open of the batch, one by one."""
    marked: list[StoredEvent] = []
    for n, event in enumerate(opens):
        earlier = [(p, a) for p, a, at in sources if at <= event.occurred_at]
        earlier += [(e.ip_prefix, e.user_agent) for e in opens[:n] if e not in marked]
        if (
            earlier
            and event.ip_prefix is not None
            and all(p != event.ip_prefix for p, _ in earlier)
            and all(a != event.user_agent for _, a in earlier)
        ):
            marked.append(event)
    return marked


def first_seen(
    opens: list[StoredEvent], sources: list[Source]
) -> tuple[datetime | None, dict[str, datetime], dict[str, datetime]]:
    """What the repository answers: the first stored open, and when the batch's networks
    and agents were first seen (those never seen absent)."""
    first = min((at for _, _, at in sources), default=None)
    prefixes: dict[str, datetime] = {}
    agents: dict[str, datetime] = {}
    for e in opens:
        times = [at for p, _, at in sources if p == e.ip_prefix]
        if e.ip_prefix is not None and times:
            prefixes[e.ip_prefix] = min(times)
        times = [at for _, a, at in sources if a == e.user_agent]
        if times:
            agents[e.user_agent] = min(times)
    return first, prefixes, agents


def _open(n: int, prefix: str | None, agent: str, minute: int) -> StoredEvent:
    return StoredEvent(
        uid=f"{n:032x}",
        copy_id=1,
        message_id=1,
        sender_id=1,
        kind=EventKind.OPEN,
        label=EventLabel.HUMAN,
        reason="",
        link_position=None,
        occurred_at=T0 + timedelta(minutes=minute),
        ip_prefix=prefix,
        user_agent=agent,
    )


@given(
    stored=st.lists(st.tuples(PREFIXES, AGENTS, MINUTES), max_size=8),
    batch=st.lists(st.tuples(PREFIXES, AGENTS, MINUTES), max_size=8),
)
def test_the_lookups_mark_what_the_rule_marks(
    stored: list[tuple[str | None, str, int]], batch: list[tuple[str | None, str, int]]
) -> None:
    sources = [(p, a, T0 + timedelta(minutes=m)) for p, a, m in stored]
    opens = sorted(
        (_open(n, p, a, m) for n, (p, a, m) in enumerate(batch)), key=lambda e: e.occurred_at
    )
    assert _unlike_earlier(opens, *first_seen(opens, sources)) == walked_out(opens, sources)


def test_a_source_first_seen_after_an_open_does_not_count_for_it() -> None:
    later = T0 + timedelta(minutes=5)
    opens = [_open(1, "192.0.2.0/24", "Mail", 1), _open(2, "192.0.2.0/24", "Mail", 6)]
    sources: list[Source] = [("198.51.100.0/24", "Chrome", T0), ("192.0.2.0/24", "Mail", later)]
    # The first open came before its source was seen (and is marked); the second after.
    assert _unlike_earlier(opens, *first_seen(opens, sources)) == [opens[0]]
    assert walked_out(opens, sources) == [opens[0]]
