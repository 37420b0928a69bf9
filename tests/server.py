"""`mailbeacon serve` as a real process on loopback, for tests that need the whole server:
uvicorn, its threadpool, the ingest writer, the outbox worker and the demo mailbox."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import select

from mailbeacon.db import Database
from mailbeacon.models import TrackingEvent

BIN = Path(sys.executable).parent / "mailbeacon"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env(data_dir: Path, db_url: str, port: int, **settings: str) -> dict[str, str]:
    """The environment of a server whose data folder and database the test owns."""
    return {
        **os.environ,
        "MAILBEACON_DATA_DIR": str(data_dir),
        "MAILBEACON_DATABASE_URL": db_url,
        "MAILBEACON_BASE_URL": f"http://127.0.0.1:{port}",
        "MAILBEACON_TOO_FAST_SECONDS": "0",
        **{f"MAILBEACON_{k}": v for k, v in settings.items()},
    }


def get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


@contextmanager
def serving(
    env: dict[str, str], port: int, *, timeout: float = 30, server: str | None = None
) -> Iterator[subprocess.Popen[bytes]]:
    """`mailbeacon serve` until the block ends; up once /healthz answers. ``server``: the
    HTTP server, else the one the environment's MAILBEACON_SERVER (or the default) names."""
    log = open(Path(env["MAILBEACON_DATA_DIR"]).parent / f"serve-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            str(BIN),
            "serve",
            "--port",
            str(port),
            "--log-level",
            "warning",
            *(["--server", server] if server else []),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                get(port, "/healthz")
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError(Path(log.name).read_text()) from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def server_log(env: dict[str, str], port: int) -> str:
    return (Path(env["MAILBEACON_DATA_DIR"]).parent / f"serve-{port}.log").read_text()


def agent(i: int) -> str:
    """A User-Agent that names request ``i``, so that each stored event names its request."""
    return f"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.{i}"


def stored_agents(database: Database) -> Counter[str]:
    """How many events are stored per User-Agent."""
    with database.sessions() as s:
        return Counter(s.scalars(select(TrackingEvent.user_agent)))
