"""Domain events that leave only after the transaction that caused them committed.

A domain raises a plain typed event (a frozen dataclass of its own) on the unit
of work it runs in (``db.after_commit``). It never learns who reacts: the
composition root registers handlers here, by event type, and the unit of work
hands its events over once the commit succeeded. A rolled-back transaction
hands over nothing, so no worker is woken and no browser told about a change
that never happened.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")
Handler = Callable[[Any], None]


class Dispatcher:
    """Calls the handlers registered for each event's type; a failing handler is logged
    and never stops the others (the change it reports is committed already)."""

    def __init__(self) -> None:
        self._handlers: dict[type, list[Handler]] = {}

    def register(self, event_type: type[E], handler: Callable[[E], None]) -> None:
        self._handlers.setdefault(event_type, []).append(handler)

    def dispatch(self, events: Iterable[object]) -> None:
        for event in events:
            for handler in self._handlers.get(type(event), ()):
                try:
                    handler(event)
                except Exception:
                    log.exception("after-commit handler for %s failed", type(event).__name__)
