"""Password hashing, token hashing, CSRF comparison and address prefixes (no database)."""

from __future__ import annotations

import time

import pytest

from mailbeacon.accounts.security import (
    hash_password,
    hash_token,
    ip_prefix,
    new_api_token,
    new_secret,
    password_needs_rehash,
    tokens_match,
    verify_password,
)


def test_passwords_are_hashed_with_argon2id_and_salted() -> None:
    first, second = hash_password("correct horse"), hash_password("correct horse")
    assert first.startswith("$argon2id$")
    assert "correct horse" not in first
    assert first != second  # a fresh salt each time
    assert verify_password(first, "correct horse")
    assert verify_password(second, "correct horse")
    assert not verify_password(first, "correct horsE")
    assert not verify_password(first, "")
    assert not password_needs_rehash(first)


@pytest.mark.parametrize("stored", [None, "", "not a hash", "$argon2id$v=19$m=1,t=1,p=1$broken"])
def test_missing_or_damaged_hashes_never_verify(stored: str | None) -> None:
    assert not verify_password(stored, "anything")


def test_an_unknown_account_costs_a_real_verification() -> None:
    known = hash_password("secret-secret")
    verify_password(None, "warm-up")  # the dummy hash is made once
    started = time.perf_counter()
    verify_password(known, "wrong-wrong")
    known_cost = time.perf_counter() - started
    started = time.perf_counter()
    verify_password(None, "wrong-wrong")
    unknown_cost = time.perf_counter() - started
    # Same algorithm and parameters: the two take the same order of time.
    assert unknown_cost > known_cost / 4


def test_tokens_are_random_and_stored_only_as_sha256() -> None:
    token = new_secret()
    assert len(token) >= 43
    assert token != new_secret()
    digest = hash_token(token)
    assert len(digest) == 64
    assert token not in digest
    api = new_api_token()
    assert api.startswith("mb_")
    assert len(api) > 40


def test_csrf_tokens_compare_exactly() -> None:
    secret = new_secret()
    assert tokens_match(secret, secret)
    assert not tokens_match(secret, secret[:-1])
    assert not tokens_match(secret, None)
    assert not tokens_match(None, None)
    assert not tokens_match("", "")


@pytest.mark.parametrize(
    ("address", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("::ffff:198.51.100.9", "198.51.100.0/24"),
        ("not an address", "unknown"),
        (None, "unknown"),
    ],
)
def test_rate_limits_count_per_network_prefix(address: str | None, prefix: str) -> None:
    assert ip_prefix(address) == prefix
