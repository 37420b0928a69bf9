"""A PostgreSQL server of the test's own, to stop and start at will.

The shared server on :5432 serves every other test, so a test that needs the
database to go away gets a throwaway cluster: Debian's initdb and pg_ctl, a
temporary data folder, 127.0.0.1 on a free port, trust authentication. As root
(CI) the server runs as the `postgres` user, which PostgreSQL requires.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.server import free_port

_BIN_ROOT = Path("/usr/lib/postgresql")


def postgres_bin() -> Path | None:
    versions = sorted(_BIN_ROOT.glob("*/bin/pg_ctl")) if _BIN_ROOT.is_dir() else []
    return versions[-1].parent if versions else None


def _as_server_user(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["runuser", "-u", "postgres", "--", *args]


@dataclass
class OwnPostgres:
    bin: Path
    data: Path
    port: int

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_server_user([str(self.bin / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        self._ctl(
            "-w",
            "-l",
            str(self.data / "server.log"),
            "-o",
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data}",
            "start",
        )

    def stop(self) -> None:
        self._ctl("-w", "-m", "fast", "stop")

    def crash(self) -> None:
        """Stop as a crash would: immediate mode, and crash recovery at the next start."""
        self._ctl("-w", "-m", "immediate", "stop")


def create_own_postgres() -> OwnPostgres:
    """An initialised, stopped cluster (the caller starts it and removes it)."""
    found = postgres_bin()
    if found is None:
        raise RuntimeError("PostgreSQL's server programs are not installed")
    root = Path(tempfile.mkdtemp(prefix="mb-own-pg-"))
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(data, "postgres")
    subprocess.run(
        _as_server_user(
            [str(found / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    return OwnPostgres(found, data, free_port())


def remove_own_postgres(server: OwnPostgres) -> None:
    with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
        server.stop()
    shutil.rmtree(server.data.parent, ignore_errors=True)


@contextlib.contextmanager
def own_postgres_server() -> Iterator[OwnPostgres]:
    """A server of the test's own (created, not started), removed afterwards. Skips the
    test where Debian's server programs are missing, except in CI, which needs them."""
    if postgres_bin() is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL's server programs are required in CI")
        pytest.skip("PostgreSQL's server programs are not installed")
    server = create_own_postgres()
    try:
        yield server
    finally:
        remove_own_postgres(server)
