"""`mailbeacon user create` and what `serve` says on a fresh install."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import pytest
from sqlalchemy import select

from mailbeacon import cli
from mailbeacon.accounts.security import verify_password
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import Organisation, User


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, db_url: str, tmp_path: Path) -> Path:
    monkeypatch.setenv("MAILBEACON_DATABASE_URL", db_url)
    monkeypatch.setenv("MAILBEACON_BASE_URL", "http://mb.test")
    # --data-dir writes MAILBEACON_DATA_DIR into os.environ; this makes it undone.
    monkeypatch.setenv("MAILBEACON_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def run(data_dir: Path, *args: str) -> int:
    return cli.main(["user", "create", "--data-dir", str(data_dir), *args])


def test_user_create_makes_a_user_who_can_sign_in(
    env: Path,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a very good password\n"))
    code = run(
        env, "--email", "Sally@Example.com", "--password-stdin", "--name", "Sally", "--org", "Acme"
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "created sally@example.com in organisation 'Acme'" in out.out
    assert "http://mb.test/sign-in" in out.out
    with database.sessions() as s:
        user = s.scalars(select(User)).one()
        org = s.scalars(select(Organisation)).one()
    assert (user.email, user.display_name, user.organisation_id) == (
        "sally@example.com",
        "Sally",
        org.id,
    )
    assert verify_password(user.password_hash, "a very good password")
    assert "a very good password" not in (user.password_hash or "")


def test_user_create_refuses_bad_input_clearly(
    env: Path,
    database: Database,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert run(env, "--email", "sally@example.com", "--password", "short") == 2
    assert "password: Use at least 10 characters." in capsys.readouterr().err
    # Long enough, and guessed early: a common password, or one built from the account.
    for guessable in ("Password123!", "sally@example.com", "sallysally1"):
        assert run(env, "--email", "sally@example.com", "--password", guessable) == 2
        assert "password: This password is too easy to guess." in capsys.readouterr().err
    assert run(env, "--email", "sally@example.com", "--password", "long enough pw") == 0
    capsys.readouterr()
    assert run(env, "--email", "SALLY@example.com", "--password", "long enough pw") == 2
    assert "already a user" in capsys.readouterr().err
    monkeypatch.setattr("sys.stdin", io.StringIO(""))  # not a terminal, no password given
    assert run(env, "--email", "otto@example.com") == 2
    assert "--password-stdin" in capsys.readouterr().err


def test_serve_explains_how_to_sign_in(
    env: Path, database: Database, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = Settings()
    args = argparse.Namespace(data_dir=None)
    cli._print_sign_in_hint(args, settings, "http://127.0.0.1:8000")
    err = capsys.readouterr().err
    assert "No user yet: open http://127.0.0.1:8000/ in your browser to create your account" in err
    assert "`mailbeacon user create --email you@example.com`" in err
    assert run(env, "--email", "sally@example.com", "--password", "long enough pw") == 0
    capsys.readouterr()
    cli._print_sign_in_hint(args, settings, "http://127.0.0.1:8000")
    err = capsys.readouterr().err
    assert "No user yet" not in err
    assert "http://127.0.0.1:8000/sign-in" in err
