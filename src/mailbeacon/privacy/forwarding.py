"""Possibly forwarded opens: a human open unlike the copy's earlier human opens.

A recipient reads their email on a few devices and networks; an open from a
network *and* an agent that none of the copy's earlier human opens came from is
more likely someone the email was forwarded to. Such an open is marked
``possibly_forwarded`` and counted apart (``forwarded_open_count`` on the copy
and the email). It stays in ``open_count``, which has always meant "opens by
people" (the API's figures keep their meaning); the pages show how many of
those were possibly forwarded beside it.

Why a step of its own and not the classifier: the classifier's verdict (the label) is
about whether a person or a machine fetched the pixel, and it sees only the copy's last
few hits within the burst window, loaded for every batch. Telling a forward apart needs
the copy's whole history: when its human opens first came from each network and agent
the batch's opens come from. Looking that up here, just before the batch is written and
only for the batch's human opens, keeps the hot path's loading unchanged and leaves the
label as it was (a forwarded reader is still a human), so figures of machines and people
mean what they did. An open with no network prefix kept (the organisation stores none)
is never marked: there is nothing to compare.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy.orm import Session

from mailbeacon.models import EventKind, EventLabel
from mailbeacon.privacy import repository
from mailbeacon.tracking.events import StoredEvent

# A row of repository.first_human_opens: what it answers for, copy, key, first seen.
_FirstSeen = tuple[int, int, str | None, datetime | None]
# A copy and a network prefix or agent.
_Pair = tuple[int, str]


class ForwardedOpens:
    """Implements ``tracking.events.ForwardedCheck``."""

    def possibly_forwarded(self, session: Session, events: Sequence[StoredEvent]) -> set[str]:
        """The batch's possibly forwarded opens, judged before the batch is written."""
        by_copy: dict[int, list[StoredEvent]] = defaultdict(list)
        # Stable: events of one time keep the batch's order, the order they are stored in.
        for e in sorted(events, key=lambda e: e.occurred_at):
            if e.kind == EventKind.OPEN and e.label == EventLabel.HUMAN and e.sender_id is not None:
                by_copy[e.copy_id].append(e)
        if not by_copy:
            return set()
        # Only the batch's own agents and networks are looked up: whether one was seen
        # before is all the rule asks of the copy's history. Agents first: an open from an
        # agent the copy's stored opens came from before it is not marked, whatever else
        # (a recipient's few devices, seen again and again), and needs nothing more.
        first_open: dict[int, datetime | None] = {}
        # Per copy, when each of those was first seen (absent: never, or not asked).
        first_from: dict[int, dict[str, datetime]] = defaultdict(dict)
        first_with: dict[int, dict[str, datetime]] = defaultdict(dict)

        def look_up(copies: set[int], prefixes: set[_Pair], agents: set[_Pair]) -> None:
            found = repository.first_human_opens(
                session, sorted(copies), sorted(prefixes), sorted(agents)
            )
            for what, copy_id, key, at in cast(list[_FirstSeen], found):
                if what == repository.COPY:
                    first_open[copy_id] = at
                elif at is not None and key is not None:
                    (first_from if what == repository.PREFIX else first_with)[copy_id][key] = at

        batch_opens = [e for o in by_copy.values() for e in o]
        look_up(set(), set(), {(e.copy_id, e.user_agent) for e in batch_opens})
        undecided = [
            e
            for e in batch_opens
            if e.ip_prefix is not None
            and not _seen(e.user_agent, e.occurred_at, first_with[e.copy_id], set())
        ]
        if undecided:
            look_up(
                {e.copy_id for e in undecided},
                {(e.copy_id, cast(str, e.ip_prefix)) for e in undecided},
                set(),
            )
        return {
            event.uid
            for copy_id, opens in by_copy.items()
            for event in _unlike_earlier(
                opens, first_open.get(copy_id), first_from[copy_id], first_with[copy_id]
            )
        }


def _unlike_earlier(
    opens: Sequence[StoredEvent],
    first_stored: datetime | None,
    prefixes: dict[str, datetime],
    agents: dict[str, datetime],
) -> list[StoredEvent]:
    """The opens (one copy's, oldest first) from another network *and* another agent than
    every earlier open of the copy that was not itself marked.

    ``first_stored`` is when the copy's first stored open came; ``prefixes`` and
    ``agents`` say when its stored opens first came from each network and agent (absent:
    never, or not asked: an open whose agent was seen before it needs no more, and a copy
    whose opens all are such needs no ``first_stored``). One seen at the very time of an
    open counts as earlier (it was stored before it). An open with no network prefix is never
    marked: there is nothing to compare.
    """
    # The batch's own opens before this one, those not marked.
    batch_prefixes: set[str | None] = set()
    batch_agents: set[str] = set()
    out: list[StoredEvent] = []
    for event in opens:
        at = event.occurred_at
        if (
            (batch_agents or (first_stored is not None and first_stored <= at))
            and event.ip_prefix is not None
            and not _seen(event.ip_prefix, at, prefixes, batch_prefixes)
            and not _seen(event.user_agent, at, agents, batch_agents)
        ):
            out.append(event)
            continue
        batch_prefixes.add(event.ip_prefix)
        batch_agents.add(event.user_agent)
    return out


def _seen(key: Any, at: datetime, stored: dict[str, datetime], batch: set[Any]) -> bool:
    if key in batch:
        return True
    first = stored.get(key)
    return first is not None and first <= at
