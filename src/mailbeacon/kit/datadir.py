"""The data folder: database, secrets and spool of one installation."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

SECRETS_FILE = "secrets.json"


def ensure_data_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
