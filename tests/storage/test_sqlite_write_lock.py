"""SQLite's one write lock: a writer gets it in the first gap another writer leaves.

The hit consumer stores batches back to back, each holding the lock for about half a
second and the next begun a few milliseconds after the last commit. SQLite's own busy
handler sleeps up to 100 ms between tries and so missed gap after gap.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from mailbeacon import db as db_module
from mailbeacon.db import Database
from mailbeacon.migrate import upgrade

HOLD = 0.3
# Long enough for a writer kept waiting by a loaded machine, far shorter than SQLite's
# own handler sleeps between its tries once it has waited a while (100 ms).
GAP = 0.03


def batches(path: Path, began: threading.Event, stop: threading.Event, done: list[float]) -> None:
    """What the consumer does to the lock, from another connection."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=30)
    try:
        while not stop.is_set():
            conn.execute("BEGIN IMMEDIATE")
            began.set()
            time.sleep(HOLD)
            conn.execute("COMMIT")
            done.append(time.monotonic())
            time.sleep(GAP)
    finally:
        conn.close()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 'lock.db'}"
    upgrade(url)
    database = Database(url)
    yield database
    database.dispose()


def test_a_writer_gets_the_lock_in_the_first_gap_between_batches(
    sqlite_database: Database, tmp_path: Path
) -> None:
    began, stop, done = threading.Event(), threading.Event(), []
    holder = threading.Thread(target=batches, args=(tmp_path / "lock.db", began, stop, done))
    holder.start()
    try:
        waited = []
        for _ in range(4):
            assert began.wait(10)
            time.sleep(HOLD / 3)  # well inside a batch
            ended = len(done)
            with sqlite_database.unit_of_work() as s:
                s.execute(text("UPDATE organisations SET name = name"))
                # Counted while the lock is held: the holder cannot end another batch.
                waited.append(len(done) - ended)
    finally:
        stop.set()
        holder.join(10)
    # Each got the lock in the gap after the batch it asked during, never a later one.
    assert waited == [1, 1, 1, 1], waited
    # And the connection went back to the pool with its own busy timeout.
    with sqlite_database.engine.connect() as conn:
        timeout = conn.exec_driver_sql("PRAGMA busy_timeout").scalar()
        assert timeout == db_module.SQLITE_BUSY_TIMEOUT_MS


def test_a_writer_still_gives_up_after_the_busy_timeout(
    sqlite_database: Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", 300)
    other = sqlite3.connect(tmp_path / "lock.db", isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    try:
        asked = time.monotonic()
        with (
            pytest.raises(OperationalError, match="database is locked"),
            sqlite_database.unit_of_work() as s,
        ):
            s.execute(text("UPDATE organisations SET name = name"))
        assert 0.3 <= time.monotonic() - asked < 5
    finally:
        other.execute("ROLLBACK")
        other.close()
    # The connection's own busy timeout is back for its other statements.
    with sqlite_database.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 300
