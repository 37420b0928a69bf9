"""Another local user cannot read the data folder: email bodies, addresses, token and
credential keys, the hit journal.

The process umask is set to the common 022 for each test, under which files are
created 0644 and folders 0755 unless the product asks for less.
"""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text

from mailbeacon.config import Settings
from mailbeacon.db import is_sqlite
from mailbeacon.migrate import upgrade
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.journal import JournalWriter
from tests.factories.hits import hit


@pytest.fixture(autouse=True)
def common_umask() -> Iterator[None]:
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def readable_by_others(data_dir: Path) -> list[str]:
    """Everything in the folder that a user other than its owner could open or list."""
    found = [f"{data_dir} {oct(mode(data_dir))}"] if mode(data_dir) & 0o077 else []
    for root, _dirs, files in os.walk(data_dir):
        for name in files:
            path = Path(root, name)
            if mode(path) & 0o077:
                found.append(f"{path.relative_to(data_dir)} {oct(mode(path))}")
    return found


def embedded_or(db_url: str) -> str:
    """The database of the test: SQLite in the data folder (embedded mode), or PostgreSQL."""
    return "" if is_sqlite(db_url) else db_url


def start(data_dir: Path, db_url: str) -> Runtime:
    """What `serve` does with the data folder: migrate, start, use the database."""
    settings = Settings(DATA_DIR=data_dir, DATABASE_URL=embedded_or(db_url))
    runtime = Runtime.from_settings(settings)
    upgrade(settings.database_url())
    with runtime.database.unit_of_work() as s:
        s.execute(text("UPDATE users SET display_name = display_name"))
    return runtime


def test_a_new_data_folder_and_everything_in_it_is_private(tmp_path: Path, db_url: str) -> None:
    data_dir = tmp_path / "var"
    runtime = start(data_dir, db_url)
    try:
        with JournalWriter(runtime.settings.journal_dir) as journal:
            journal.append_many([hit(1)])
        assert mode(data_dir) == 0o700
        assert mode(data_dir / "secrets.json") == 0o600
        if is_sqlite(db_url):
            for name in ("mailbeacon.db", "mailbeacon.db-wal", "mailbeacon.db-shm"):
                assert mode(data_dir / name) == 0o600, name
        assert list(runtime.settings.journal_dir.iterdir())
        assert readable_by_others(data_dir) == []
    finally:
        runtime.database.dispose()


def test_an_existing_install_is_made_private_when_it_starts(tmp_path: Path, db_url: str) -> None:
    # As an earlier version left it: folder 0755, SQLite files 0644, a spooled hit.
    data_dir = tmp_path / "var"
    data_dir.mkdir()
    spool = data_dir / "spool"
    spool.mkdir()
    (spool / "hits-1-abc.active").write_text("{}\n")
    (data_dir / "secrets.json").write_text("{}")
    os.chmod(data_dir / "secrets.json", 0o644)
    if is_sqlite(db_url):
        conn = sqlite3.connect(data_dir / "mailbeacon.db")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE earlier (x)")
        conn.commit()
        held_open = conn  # keeps -wal and -shm in place
    assert mode(data_dir) == 0o755
    assert readable_by_others(data_dir)
    runtime = start(data_dir, db_url)
    try:
        assert readable_by_others(data_dir) == []
        assert mode(spool) == 0o700
        if is_sqlite(db_url):
            for name in ("mailbeacon.db", "mailbeacon.db-wal", "mailbeacon.db-shm"):
                assert mode(data_dir / name) == 0o600, name
            held_open.close()
    finally:
        runtime.database.dispose()


def test_sqlite_files_made_after_start_are_private_too(tmp_path: Path) -> None:
    # A database named in DATABASE_URL outside the data folder, created by the first
    # connection; its -wal and -shm are made again after every last connection closes.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "mail.db"
    settings = Settings(DATA_DIR=tmp_path / "var", DATABASE_URL=f"sqlite:///{path}")
    runtime = Runtime.from_settings(settings)
    try:
        for _ in range(2):
            with runtime.database.unit_of_work() as s:
                s.execute(text("CREATE TABLE IF NOT EXISTS t (x)"))
                s.execute(text("INSERT INTO t VALUES (1)"))
            for name in ("mail.db", "mail.db-wal", "mail.db-shm"):
                assert mode(elsewhere / name) == 0o600, name
            runtime.database.dispose()  # SQLite removes -wal and -shm with the last connection
        assert mode(elsewhere) == 0o755  # not ours to change: the operator chose the place
    finally:
        runtime.database.dispose()
