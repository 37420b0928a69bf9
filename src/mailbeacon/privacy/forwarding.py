"""Possibly forwarded opens: a human open unlike the copy's earlier human opens.

A recipient reads their email on a few devices and networks; an open from a
network *and* an agent that none of the copy's earlier human opens came from is
more likely someone the email was forwarded to. Such an open is marked
``possibly_forwarded`` and counted apart (``forwarded_open_count`` on the copy
and the email). It stays in ``open_count``, which has always meant "opens by
people" (the API's figures keep their meaning); the pages show how many of
those were possibly forwarded beside it.

Why an observer and not the classifier: the classifier's verdict (the label) is
about whether a person or a machine fetched the pixel, and it sees only the
copy's last few hits within the burst window, loaded for every batch. Telling a
forward apart needs the copy's whole history of human opens, which only copies
opened before have; reading it here, after the events are stored and only for
the batch's human opens, keeps the hot path's loading unchanged and leaves the
label as it was (a forwarded reader is still a human), so figures of machines
and people mean what they did. An open with no network prefix kept (the
organisation stores none) is never marked: there is nothing to compare.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from sqlalchemy.orm import Session

from mailbeacon.models import EventKind, EventLabel
from mailbeacon.privacy import repository
from mailbeacon.tracking.events import StoredEvent


class ForwardedOpens:
    """Implements ``tracking.events.HitObserver``."""

    def on_events_stored(self, session: Session, events: Sequence[StoredEvent]) -> None:
        """Mark the batch's possibly forwarded opens, inside the batch's transaction."""
        fresh = {
            e.uid
            for e in events
            if e.kind == EventKind.OPEN and e.label == EventLabel.HUMAN and e.sender_id is not None
        }
        if not fresh:
            return
        copy_ids = sorted({e.copy_id for e in events if e.uid in fresh})
        seen: dict[int, list[tuple[str | None, str]]] = defaultdict(list)
        marked: list[str] = []
        per_copy: dict[int, int] = defaultdict(int)
        per_message: dict[int, int] = defaultdict(int)
        for row in repository.human_opens(session, copy_ids):
            earlier = seen[row.copy_id]
            if row.uid in fresh and _unlike(row.ip_prefix, row.user_agent, earlier):
                marked.append(row.uid)
                per_copy[row.copy_id] += 1
                per_message[row.message_id] += 1
            elif not row.possibly_forwarded:
                earlier.append((row.ip_prefix, row.user_agent))
        if marked:
            repository.mark_forwarded(session, marked, per_copy, per_message)


def _unlike(prefix: str | None, agent: str, earlier: list[tuple[str | None, str]]) -> bool:
    """Another network and another agent than every earlier human open of the copy."""
    if not earlier or prefix is None:
        return False
    return all(prefix != p and agent != a for p, a in earlier)
