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

from sqlalchemy.orm import Session

from mailbeacon.kit.clock import as_utc
from mailbeacon.models import EventKind, EventLabel
from mailbeacon.privacy import repository
from mailbeacon.tracking.events import StoredEvent


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
        known: dict[int, list[tuple[datetime, str | None, str]]] = defaultdict(list)
        for row in repository.human_sources(session, sorted(by_copy)):
            known[row.copy_id].append((as_utc(row.first_at), row.ip_prefix, row.user_agent))
        return {
            event.uid
            for copy_id, opens in by_copy.items()
            for event in _unlike_earlier(opens, sorted(known[copy_id], key=lambda k: k[0]))
        }


def _unlike_earlier(
    opens: Sequence[StoredEvent], sources: Sequence[tuple[datetime, str | None, str]]
) -> list[StoredEvent]:
    """The opens (one copy's, oldest first) from another network *and* another agent than
    every earlier open of the copy that was not itself marked.

    ``sources`` are the copy's stored sources with the time each was first seen,
    oldest first; a source seen at the very time of an open counts as earlier (it
    was stored before it). An open with no network prefix is never marked: there is
    nothing to compare.
    """
    prefixes: set[str | None] = set()
    agents: set[str] = set()
    taken = 0
    out: list[StoredEvent] = []
    for event in opens:
        while taken < len(sources) and sources[taken][0] <= event.occurred_at:
            _, prefix, agent = sources[taken]
            prefixes.add(prefix)
            agents.add(agent)
            taken += 1
        earlier = bool(agents)
        if (
            earlier
            and event.ip_prefix is not None
            and event.ip_prefix not in prefixes
            and event.user_agent not in agents
        ):
            out.append(event)
            continue
        prefixes.add(event.ip_prefix)
        agents.add(event.user_agent)
    return out
