"""Domain events: observed inside the transaction that caused them, or handed over
only after it committed.

A domain raises a plain typed event (a frozen dataclass of its own) on the unit
of work it runs in (``db.after_commit``). It never learns who reacts: the
composition root registers handlers here, by event type, and the unit of work
hands its events over once the commit succeeded. A rolled-back transaction
hands over nothing, so no worker is woken and no browser told about a change
that never happened.

Some facts must be recorded by another domain in the *same* transaction (a webhook
event for a consent change: never lost, never for a change rolled back). Those are
raised with ``db.in_transaction`` and observed here, by :class:`Observers`, before
the commit: an observer that fails rolls the whole unit of work back.
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


class Observers:
    """Calls the in-transaction observers registered for each event's type, with the
    session the event was raised on. Failures propagate: the unit of work rolls back."""

    def __init__(self) -> None:
        self._observers: dict[type, list[Callable[[Any, Any], None]]] = {}

    def register(self, event_type: type[E], observer: Callable[[Any, E], None]) -> None:
        self._observers.setdefault(event_type, []).append(observer)

    def observe(self, session: Any, events: Iterable[object]) -> None:
        for event in events:
            for observer in self._observers.get(type(event), ()):
                observer(session, event)
