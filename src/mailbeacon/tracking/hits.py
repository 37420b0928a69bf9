"""A hit as the edge saw it: what the journal records and the pipeline stores."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from mailbeacon.models.event import EventKind

# The most of a user agent a hit keeps: a longer one tells a classifier nothing more.
# The edge cuts what it reads here, and its characters (a header's bytes, read as
# Latin-1) take at most two bytes each in UTF-8.
USER_AGENT_CHARS = 1000
# The most UTF-8 bytes of it the database gets: with the copy and the time
# it must fit in an entry of a PostgreSQL b-tree index (2,704 bytes), that of
# ix_tracking_events_human_agents.
USER_AGENT_BYTES = 2000


def kept_user_agent(agent: str) -> str:
    """``agent`` as stored: cut to ``USER_AGENT_CHARS`` characters and, for a hit that did
    not come from the edge, to ``USER_AGENT_BYTES`` bytes of UTF-8 (whole characters)."""
    if len(agent) <= USER_AGENT_BYTES // 4:  # whatever its characters: nearly every agent
        return agent
    agent = agent[:USER_AGENT_CHARS]
    raw = agent.encode("utf-8", "surrogatepass")
    if len(raw) <= USER_AGENT_BYTES:
        return agent
    return raw[:USER_AGENT_BYTES].decode("utf-8", "ignore")


def new_uid(at: float) -> str:
    """A hit's uid: the milliseconds of ``at`` (48 bits), then 80 random bits, in hex.

    Random bits alone would do for uniqueness (80 are plenty within a millisecond),
    but every index on the uid (the uniqueness the consumer's exactly-once rests on,
    the lookups of a batch's uids) would then take each insert somewhere else in the
    tree. Time first, as UUIDv7 orders them, makes a batch's uids neighbours: the
    inserts go to the end of the index and its lookups to a few pages.
    """
    try:
        tail = next(_random_tails)
    except StopIteration:
        tail = _refill()
    return f"{int(at * 1000):012x}{tail}"


# The random part comes from the OS in blocks: one getrandom() per request was a
# tenth of the edge's own work. A list iterator hands each item out once, even to
# threads (next() on it holds the interpreter lock), and a forked child starts on
# a block of its own, never on a copy of its parent's.
_TAILS_PER_BLOCK = 1024
_random_tails: Iterator[str] = iter(())


def _refill() -> str:
    global _random_tails
    block = os.urandom(10 * _TAILS_PER_BLOCK).hex()
    tails = [block[i : i + 20] for i in range(0, len(block), 20)]
    _random_tails = iter(tails[1:])
    return tails[0]


def _forget_tails() -> None:
    global _random_tails
    _random_tails = iter(())


os.register_at_fork(after_in_child=_forget_tails)


@dataclass(slots=True)
class Hit:
    """One request on the tracking edge, minimised before it leaves memory.

    The raw client address never gets here: the edge keeps only its truncated
    prefix and the name of the published network it falls in.
    """

    uid: str
    kind: EventKind
    copy_id: int
    link_position: int | None
    occurred_at: float  # Unix time, seconds
    user_agent: str
    ip_prefix: str | None
    network: str | None
    is_head: bool
    prefetch_hint: str | None
    viewer_user_id: int | None

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Hit:
        data: dict[str, Any] = json.loads(line)
        data["kind"] = EventKind(data["kind"])
        return cls(**data)
