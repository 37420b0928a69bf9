"""Sign-in under attack: guessing is slowed where it comes from, the owner is never
locked out from elsewhere, and passwords that are guessed early are never set."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import ValidationError

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from tests.client import csrf_of, make_client
from tests.factories.accounts import PASSWORD, create_user

ATTACKER = "198.51.100.7"
OWNER = "203.0.113.50"


async def _attempt(client: httpx.AsyncClient, password: str) -> httpx.Response:
    token = csrf_of((await client.get("/sign-in")).text)
    return await client.post(
        "/sign-in",
        data={"email": "sally@example.com", "password": password, "csrf_token": token},
    )


@pytest.mark.asyncio
async def test_wrong_passwords_from_elsewhere_never_lock_the_owner_out(
    app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    async with make_client(app, ip=ATTACKER) as attacker:
        for i in range(20):
            r = await _attempt(attacker, f"wrong password {i}")
            assert r.status_code in (401, 429)
    async with make_client(app, ip=OWNER) as owner:
        r = await _attempt(owner, PASSWORD)
        assert r.status_code == 303
        assert "mb_session=" in r.headers["set-cookie"]


@pytest.mark.asyncio
async def test_guessing_from_one_network_is_told_to_wait_and_cannot_guess_meanwhile(
    app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    # Addresses of one /24 are one network: rotating through them does not help.
    statuses = []
    for i in range(6):
        async with make_client(app, ip=f"198.51.100.{i + 1}") as attacker:
            r = await _attempt(attacker, f"wrong password {i}")
            statuses.append((r.status_code, r.headers.get("retry-after")))
    assert [code for code, _ in statuses] == [401] * 3 + [429] * 3
    assert [wait for _, wait in statuses[:3]] == [None] * 3
    # Five seconds from the third failure, counted down while the machine is slow.
    waits = [int(wait or 0) for _, wait in statuses[3:]]
    assert all(1 <= w <= 5 for w in waits) and waits == sorted(waits, reverse=True), waits
    # While the wait lasts even the right password is not checked from there: a
    # guess that happened to be right would otherwise tell the attacker so.
    async with make_client(app, ip=ATTACKER) as attacker:
        r = await _attempt(attacker, PASSWORD)
        assert r.status_code == 429
        assert re.search(r"Too many attempts, try again in [1-5] seconds?\.", r.text), r.text


@pytest.mark.parametrize(
    "password",
    [
        "password12",  # long enough, and among the most common
        "Password123!",
        "qwertyuiop",
        "1234567890",
        "sally@example.com",  # the account's own email
        "sallyseller",  # the account's name
        "seller2024!",
        "aaaaaaaaaaaa",
        "short",
    ],
)
def test_passwords_that_are_guessed_early_are_refused(password: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NewUser(email="sally@example.com", name="Sally Seller", password=password)
    errors = caught.value.errors()
    assert [e["loc"] for e in errors] == [("password",)]
    message = str(errors[0]["msg"])
    assert "too easy to guess" in message or "at least 10 characters" in message


@pytest.mark.parametrize(
    "password", [PASSWORD, "violet kettle harbour", "  spaced out passphrase  "]
)
def test_strong_passwords_are_kept_exactly_as_typed(password: str) -> None:
    assert NewUser(email="sally@example.com", name="Sally", password=password).password == password
