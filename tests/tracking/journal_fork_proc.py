"""Forks while a journal writer has an open segment (for test_journal.py).

    python journal_fork_proc.py DIR

The child tries to append (the writer must refuse) and then stays alive while
the parent closes its writer; the parent prints ``child refused: <bool>`` and
``unlocked while child lives: <bool>``.
"""

from __future__ import annotations

import fcntl
import os
import sys
import time
import uuid
from pathlib import Path

from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.journal import JournalWriter


def hit() -> Hit:
    return Hit(uuid.uuid4().hex, "open", 1, None, time.time(), "ua", None, None, False, None, None)


def main() -> None:
    writer = JournalWriter(Path(sys.argv[1]), max_segment_age=3600)
    writer.append_many([hit()])
    segment = writer.segment_path
    assert segment is not None
    to_parent, from_child = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            writer.append_many([hit()])
            refused = b"0"
        except RuntimeError:
            refused = b"1"
        os.write(from_child, refused)
        time.sleep(30)  # outlive the parent's close; the parent kills us
        os._exit(0)
    refused = os.read(to_parent, 1) == b"1"
    writer.close()
    fd = os.open(segment, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        unlocked = True
    except BlockingIOError:
        unlocked = False
    os.close(fd)
    alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    print(f"child refused: {refused}")
    print(f"unlocked while child lives: {unlocked and alive}")


if __name__ == "__main__":
    main()
