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
where all the copy's earlier human opens came from (each network and agent once, with
when it was first seen); reading that here, just before the batch is written and only
for the copies of its human opens, keeps the hot path's loading unchanged and leaves the
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

# A row of repository.human_sources: copy, network prefix, agent, first seen.
_Source = tuple[int, str | None, str, datetime]


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
        # When each network prefix and each agent was first seen among the copy's stored
        # sources: one dictionary update per source, and a lookup per open.
        prefixes: dict[int, dict[str | None, datetime]] = defaultdict(dict)
        agents: dict[int, dict[str, datetime]] = defaultdict(dict)
        sources = repository.human_sources(session, sorted(by_copy))
        for copy_id, prefix, agent, first_at in cast(list[_Source], sources):
            _keep_earliest(prefixes[copy_id], prefix, first_at)
            _keep_earliest(agents[copy_id], agent, first_at)
        return {
            event.uid
            for copy_id, opens in by_copy.items()
            for event in _unlike_earlier(opens, prefixes[copy_id], agents[copy_id])
        }


def _keep_earliest(first: dict[Any, datetime], key: Any, at: datetime) -> None:
    known = first.get(key)
    if known is None or at < known:
        first[key] = at


def _unlike_earlier(
    opens: Sequence[StoredEvent],
    prefixes: dict[str | None, datetime],
    agents: dict[str, datetime],
) -> list[StoredEvent]:
    """The opens (one copy's, oldest first) from another network *and* another agent than
    every earlier open of the copy that was not itself marked.

    ``prefixes`` and ``agents`` say when the copy's stored opens first came from each;
    one seen at the very time of an open counts as earlier (it was stored before it).
    An open with no network prefix is never marked: there is nothing to compare.
    """
    first_stored = min(agents.values(), default=None)
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


def _seen(key: Any, at: datetime, stored: dict[Any, datetime], batch: set[Any]) -> bool:
    if key in batch:
        return True
    first = stored.get(key)
    return first is not None and first <= at
