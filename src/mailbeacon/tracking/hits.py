"""A hit as the edge saw it: what the journal records and the pipeline stores."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

from mailbeacon.models.event import EventKind


def new_uid(at: float) -> str:
    """A hit's uid: the milliseconds of ``at`` (48 bits), then 80 random bits, in hex.

    Random bits alone would do for uniqueness (80 are plenty within a millisecond),
    but every index on the uid (the uniqueness the consumer's exactly-once rests on,
    the lookups of a batch's uids) would then take each insert somewhere else in the
    tree. Time first, as UUIDv7 orders them, makes a batch's uids neighbours: the
    inserts go to the end of the index and its lookups to a few pages.
    """
    return f"{int(at * 1000):012x}{os.urandom(10).hex()}"


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
