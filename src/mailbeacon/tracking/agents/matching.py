"""Named-token tables and the one-scan search over them.

Each table is a tuple of entries in priority order: an Edge agent also says
"Chrome/", a Facebook in-app agent also carries the Android WebView marker, and
the earlier entry must win wherever its token sits in the string. A table is
searched with one alternation of all its entries (without named groups, which
make Python's engine several times slower); each token found is then matched
against the entries in priority order. Entries match short tokens, never a long
stretch of the agent, so one scan finds them all. Patterns are lowercase and run
on the lowercased agent, as case-insensitive matching is slower too.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Entry:
    """One named agent family: how to recognise it, what to call it, where we saw it."""

    key: str
    pattern: str
    name: str
    # Where a real agent string of this family was published (repository and
    # path, or vendor page). "name only" marks rules kept without a public sample.
    source: str = ""
    # The network that operates it (image proxies), as NetworkMap names it.
    operator: str | None = None


@dataclass(frozen=True, slots=True)
class Table:
    entries: tuple[Entry, ...]
    probe: re.Pattern[str]
    compiled: tuple[re.Pattern[str], ...]

    def first(self, agent: str) -> Entry | None:
        """The highest-priority entry found anywhere in the lowercased agent."""
        best = len(self.entries)
        for m in self.probe.finditer(agent):
            token = m.group()
            for rank, entry in enumerate(self.compiled[:best]):
                if entry.fullmatch(token):
                    best = rank
                    break
            if best == 0:
                break
        return self.entries[best] if best < len(self.entries) else None


def compile_table(entries: Sequence[Entry]) -> Table:
    keys = [e.key for e in entries]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in an agent table: {keys}")
    return Table(
        entries=tuple(entries),
        probe=re.compile("|".join(f"(?:{e.pattern})" for e in entries)),
        compiled=tuple(re.compile(e.pattern) for e in entries),
    )
