"""The data folder: database, secrets and hit journal of one installation."""

from __future__ import annotations

import base64
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

SECRETS_FILE = "secrets.json"


# The data folder holds the database (email bodies, addresses), the token and
# credential keys and the hit journal: no other local user may read any of it.
PRIVATE_DIR_MODE = 0o700
PRIVATE_FILE_MODE = 0o600


def ensure_data_dir(path: Path) -> Path:
    """Create the data folder private to its owner, and make an existing one private.

    Installs made before the folder was private had it 0755 and the database
    0644; everything in it is narrowed at each start (files other processes
    create later inherit the folder's protection, and SQLite's own files are
    kept 0600 by ``db.py``).
    """
    path.mkdir(mode=PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    make_private(path)
    return path


def make_private(path: Path) -> None:
    """Take group and other permissions off a folder and everything in it that we own."""
    _narrow(path, PRIVATE_DIR_MODE)
    for root, dirs, files in os.walk(path):
        for name in dirs:
            _narrow(Path(root, name), PRIVATE_DIR_MODE)
        for name in files:
            _narrow(Path(root, name), PRIVATE_FILE_MODE)


def _narrow(path: Path, mode: int) -> None:
    try:
        info = path.lstat()
    except FileNotFoundError:  # removed meanwhile (a journal segment consumed)
        return
    if stat.S_ISLNK(info.st_mode) or info.st_uid != os.getuid():
        return
    if stat.S_IMODE(info.st_mode) & 0o077:
        path.chmod(stat.S_IMODE(info.st_mode) & mode)


def _write_private(path: Path, data: dict[str, Any]) -> None:
    """Write a file only the owner can read, replacing it atomically."""
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def new_secret(nbytes: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(nbytes)).decode()


def load_secrets(data_dir: Path) -> dict[str, Any]:
    """Read the installation's secrets, generating them on first run.

    They never live in the repository: a fresh data folder gets fresh keys.
    """
    ensure_data_dir(data_dir)
    path = data_dir / SECRETS_FILE
    data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    changed = False
    if not data.get("token_keys"):
        data["token_keys"] = [{"id": 1, "secret": new_secret(64)}]
        changed = True
    for name, size in (("session_secret", 32), ("credentials_key", 32)):
        if not data.get(name):
            data[name] = new_secret(size)
            changed = True
    if changed:
        _write_private(path, data)
    return data


def save_secrets(data_dir: Path, data: dict[str, Any]) -> None:
    _write_private(data_dir / SECRETS_FILE, data)
