"""The local spool: where acknowledged hits wait while the database is away.

Each process appends to its own file under an exclusive ``flock``, with one
``fsync`` per batch, before the edge answers. A replayer claims a file by taking
the same lock and renaming it, so a batch is either in the file it reads or in a
new file, never lost between the two. Events carry a unique id, so a replay
interrupted after its commit but before the file was removed does not count
twice.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mailbeacon.tracking.hits import Hit

log = logging.getLogger(__name__)

_ACTIVE = ".jsonl"
_CLAIMED = ".replaying"
# Not ".jsonl": the replayer must never pick it up.
REJECTED_FILE = "rejected.hits"


def _write_all(fd: int, data: bytes) -> None:
    """os.write may write less than asked (a full disk): write the rest or raise."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("the spool file accepted no more bytes")
        view = view[written:]


def _fsync_directory(directory: Path) -> None:
    """Make a newly created file's directory entry durable too."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._name = f"hits-{os.getpid()}-{uuid.uuid4().hex[:8]}"

    @property
    def active_path(self) -> Path:
        return self.directory / (self._name + _ACTIVE)

    def append(self, hits: list[Hit]) -> None:
        """Append hits and make them durable (fsync) before returning."""
        self.directory.mkdir(parents=True, exist_ok=True)
        data = "".join(h.to_json() + "\n" for h in hits).encode()
        while True:
            created = not self.active_path.exists()
            fd = os.open(self.active_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                # A replayer may have claimed (renamed) the file while we waited
                # for the lock; then write to a fresh file instead.
                try:
                    same = os.fstat(fd).st_ino == os.stat(self.active_path).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    continue
                _write_all(fd, data)
                os.fsync(fd)
                if created:
                    _fsync_directory(self.directory)
                return
            finally:
                os.close(fd)

    def reject(self, hits: list[Hit], reason: str) -> None:
        """Keep hits the database refused (not for being away) out of the replay loop."""
        self._reject_lines([h.to_json() for h in hits], reason)

    def _reject_lines(self, lines: list[str], reason: str) -> None:
        log.error("setting %d hit(s) aside in %s: %s", len(lines), REJECTED_FILE, reason)
        self.directory.mkdir(parents=True, exist_ok=True)
        data = "".join(json.dumps({"reason": reason, "hit": line}) + "\n" for line in lines)
        fd = os.open(self.directory / REJECTED_FILE, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _write_all(fd, data.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def has_pending(self) -> bool:
        return self.directory.is_dir() and any(
            p.suffix in (_ACTIVE, _CLAIMED) for p in self.directory.iterdir()
        )

    @contextmanager
    def claim(self) -> Iterator[tuple[Path, list[Hit]] | None]:
        """Claim one spool file (any process's) and yield its hits.

        The file is deleted when the block exits normally; on an exception it
        stays claimed and any process may take it over once the lock is free.
        """
        if not self.directory.is_dir():
            yield None
            return
        for path in sorted(self.directory.iterdir()):
            if path.suffix not in (_ACTIVE, _CLAIMED):
                continue
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # being written or replayed right now
                try:
                    if os.fstat(fd).st_ino != os.stat(path).st_ino:
                        continue
                except FileNotFoundError:
                    continue
                claimed = path
                if path.suffix == _ACTIVE:
                    claimed = path.with_name(f"{path.stem}-{uuid.uuid4().hex[:8]}{_CLAIMED}")
                    os.rename(path, claimed)
                with os.fdopen(os.dup(fd), "r", encoding="utf-8") as fh:
                    lines = fh.read().split("\n")
                # The last element is the (possibly partial) unterminated tail:
                # a write cut short by a crash was never acknowledged.
                hits = []
                for line in lines[:-1]:
                    if not line:
                        continue
                    try:
                        hits.append(Hit.from_json(line))
                    except (ValueError, TypeError):
                        # Unreadable: set aside for an operator, never in the way
                        # of the lines after it.
                        self._reject_lines([line], "unreadable spool line")
                yield claimed, hits
                claimed.unlink(missing_ok=True)
                return
            finally:
                os.close(fd)
        yield None
