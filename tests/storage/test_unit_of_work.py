"""The unit of work's two kinds of events: observed inside the transaction before the
commit (``in_transaction``), handed over only after it (``after_commit``)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mailbeacon.db import Database, after_commit, in_transaction
from mailbeacon.kit.events import Dispatcher, Observers
from mailbeacon.models import Organisation


@dataclass(frozen=True)
class Named:
    name: str


@dataclass(frozen=True)
class Told:
    name: str


def organisations(database: Database) -> list[str]:
    with database.sessions() as s:
        return sorted(s.scalars(select(Organisation.name)))


@pytest.fixture
def wired(database: Database) -> tuple[Database, list[object]]:
    """The test database with observers that write in the observed transaction (and
    raise an event of their own), and a dispatcher that records what it was handed."""
    observers, dispatcher, handed = Observers(), Dispatcher(), []

    def write_a_mirror(session: Session, event: Named) -> None:
        session.add(Organisation(name=f"mirror of {event.name}"))
        after_commit(session, Told(event.name))
        if event.name == "chain":
            in_transaction(session, Named("chained"))

    observers.register(Named, write_a_mirror)
    dispatcher.register(Told, handed.append)
    database.observe = observers.observe
    database.dispatch = dispatcher.dispatch
    return database, handed


def test_observers_write_in_the_same_transaction_before_the_commit(
    wired: tuple[Database, list[object]],
) -> None:
    database, handed = wired
    with database.unit_of_work() as s:
        s.add(Organisation(name="Acme"))
        in_transaction(s, Named("Acme"))
        # Nothing is observed until the block ends: the event waits for the commit.
        assert s.scalar(select(func.count()).select_from(Organisation)) == 1
    assert organisations(database) == ["Acme", "mirror of Acme"]
    assert handed == [Told("Acme")]


def test_events_an_observer_raises_are_observed_in_the_same_unit(
    wired: tuple[Database, list[object]],
) -> None:
    database, handed = wired
    with database.unit_of_work() as s:
        in_transaction(s, Named("chain"))
    assert organisations(database) == ["mirror of chain", "mirror of chained"]
    assert handed == [Told("chain"), Told("chained")]


def test_a_rolled_back_unit_is_neither_observed_nor_dispatched(
    wired: tuple[Database, list[object]],
) -> None:
    database, handed = wired

    def fail_after_raising() -> None:
        with database.unit_of_work() as s:
            s.add(Organisation(name="Acme"))
            in_transaction(s, Named("Acme"))
            raise LookupError

    with pytest.raises(LookupError):
        fail_after_raising()
    assert organisations(database) == []
    assert handed == []


def test_an_observer_that_fails_rolls_the_whole_unit_back(
    wired: tuple[Database, list[object]],
) -> None:
    database, handed = wired

    def refuse(session: Session, event: Named) -> None:
        raise PermissionError(event.name)

    observers = Observers()
    observers.register(Named, refuse)
    database.observe = observers.observe

    def change() -> None:
        with database.unit_of_work() as s:
            s.add(Organisation(name="Acme"))
            after_commit(s, Told("Acme"))
            in_transaction(s, Named("Acme"))

    with pytest.raises(PermissionError):
        change()
    assert organisations(database) == []
    assert handed == []
