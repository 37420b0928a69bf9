#!/usr/bin/env python3
"""Set up and run mailbeacon from a fresh clone, with nothing but Python 3.11+.

    python3 dev.py run     # create .venv if needed, migrate the embedded database, serve on :8000
    python3 dev.py test    # create .venv if needed, then lint, type-check and run the whole suite

Extra arguments after `test` go to pytest; after `run` they go to `mailbeacon serve`.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
STAMP = VENV / ".mailbeacon-installed"


def _python() -> str:
    return str(BIN / "python")


def ensure_env() -> None:
    """Create the virtualenv and install the pinned dependencies when they changed."""
    if sys.version_info < (3, 11):
        sys.exit("mailbeacon needs Python 3.11 or newer")
    digest = hashlib.sha256(
        (ROOT / "pyproject.toml").read_bytes() + (ROOT / "constraints.txt").read_bytes()
    ).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    if not (BIN / "python").exists():
        print("creating .venv ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    print("installing pinned dependencies ...", flush=True)
    pip = [_python(), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-c", str(ROOT / "constraints.txt"), "-e", f"{ROOT}[dev]"], check=True)
    STAMP.write_text(digest)


def run(args: list[str]) -> int:
    ensure_env()
    return subprocess.call([str(BIN / "mailbeacon"), "serve", *args], cwd=ROOT)


def test(args: list[str]) -> int:
    ensure_env()
    steps = [
        [str(BIN / "ruff"), "check", "src", "tests", "bench", "dev.py"],
        [str(BIN / "mypy")],
        # The layers and independent domains declared in pyproject.toml.
        [str(BIN / "lint-imports")],
        [str(BIN / "pytest"), *args],
    ]
    for step in steps:
        print(
            "$",
            " ".join(Path(step[0]).name if i == 0 else a for i, a in enumerate(step)),
            flush=True,
        )
        code = subprocess.call(step, cwd=ROOT)
        if code:
            return code
    return 0


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "test"):
        print(__doc__)
        return 2
    command, rest = sys.argv[1], sys.argv[2:]
    return run(rest) if command == "run" else test(rest)


if __name__ == "__main__":
    raise SystemExit(main())
