"""Password hashing and strength, random tokens, CSRF comparison and sign-in throttling."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from zxcvbn import zxcvbn  # type: ignore[import-untyped]

# argon2-cffi's defaults are RFC 9106's "second recommended option" (argon2id,
# t=3, 64 MiB, p=4): about a tenth of a second per hash on a current server.
_hasher = PasswordHasher()

PASSWORD_MIN_CHARS = 10
# Bounds the work an anonymous request can ask of the hasher.
PASSWORD_MAX_CHARS = 1024
# zxcvbn's score: 3 is "safely unguessable: moderate protection from offline
# slow-hash scenario" (under 10^10 guesses it is not).
PASSWORD_MIN_SCORE = 3
# zxcvbn refuses longer input (its matching is superlinear); the first 72
# characters are rated, as bcrypt-era advice rates them.
_ZXCVBN_MAX_CHARS = 72

SESSION_COOKIE = "mb_session"
# Anonymous forms (sign-in) carry a double-submit token tied to this cookie.
ANON_CSRF_COOKIE = "mb_csrf"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SESSION_LIFETIME = timedelta(days=30)
# last_seen_at is refreshed at most this often, so reading a page rarely writes.
SESSION_TOUCH_INTERVAL = timedelta(hours=1)
# The viewer cookie lives as long as browsers allow (Chrome caps cookies at 400 days).
VIEWER_COOKIE_MAX_AGE = int(timedelta(days=400).total_seconds())
API_TOKEN_PREFIX = "mb_"  # noqa: S105 (a prefix that makes tokens recognisable, no secret)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `failures` failed sign-ins per key within `window`."""

    failures: int
    window: timedelta


@dataclass(frozen=True, slots=True)
class Backoff:
    """Failed sign-ins to one account from one network: a few free tries, then a wait
    before the next one that doubles with each failure, up to `longest_wait`.

    Nothing locks the account: the owner's right password from any other network
    gets in at once, and guessing from one network slows to one try per
    `longest_wait`. Failures are forgotten after a success from that network, or
    `memory` after they happened.
    """

    free_failures: int
    first_wait: timedelta
    longest_wait: timedelta
    memory: timedelta

    def wait_after(self, failures: int) -> timedelta:
        """How long after the last of `failures` failures the next try must wait."""
        if failures < self.free_failures:
            return timedelta(0)
        doublings = min(failures - self.free_failures, 32)
        return min(self.longest_wait, self.first_wait * (1 << doublings))


ACCOUNT_NETWORK_BACKOFF = Backoff(
    free_failures=3,
    first_wait=timedelta(seconds=5),
    longest_wait=timedelta(minutes=15),
    memory=timedelta(hours=24),
)
# Against spraying: one network trying many accounts (each with few tries).
NETWORK_LIMIT = RateLimit(failures=30, window=timedelta(minutes=15))


_zxcvbn_lock = threading.Lock()


def password_problem(password: str, user_inputs: Iterable[str] = ()) -> str | None:
    """Why a new password would be refused, in words for the person choosing it; None if
    it is long and hard enough to guess.

    ``user_inputs`` are what an attacker knows about the account (its email and
    name): a password built from them is guessed early.
    """
    if len(password) < PASSWORD_MIN_CHARS:
        return f"Use at least {PASSWORD_MIN_CHARS} characters."
    if len(password) > PASSWORD_MAX_CHARS:
        return f"Use at most {PASSWORD_MAX_CHARS} characters."
    words = sorted(_guessable_words(user_inputs))
    # zxcvbn keeps the user inputs in a module-level dictionary while it rates:
    # two ratings at once would see each other's.
    with _zxcvbn_lock:
        result = zxcvbn(password[:_ZXCVBN_MAX_CHARS], user_inputs=words)
    if int(result["score"]) >= PASSWORD_MIN_SCORE:
        return None
    feedback = result.get("feedback") or {}
    hints = [feedback.get("warning") or "", *(feedback.get("suggestions") or [])]
    detail = " ".join(h.strip() for h in hints if h and h.strip())
    return "This password is too easy to guess." + (f" {detail}" if detail else "")


def _guessable_words(values: Iterable[str]) -> set[str]:
    """An email or a name and the parts an attacker would try: local part, domain labels,
    words of the name."""
    words: set[str] = set()
    for value in values:
        value = value.strip().lower()
        if not value:
            continue
        words.add(value)
        local, _, domain = value.partition("@")
        for part in [local, *domain.split("."), *value.replace(".", " ").split()]:
            if len(part) >= 3:
                words.add(part)
    return words


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Check a password; an account without a hash is checked against a dummy one.

    Verifying against the dummy hash makes an unknown or password-less account
    cost the same time as a known one, so timing does not tell which emails exist.
    """
    try:
        return _hasher.verify(password_hash or _dummy_hash(), password) and bool(password_hash)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def password_needs_rehash(password_hash: str) -> bool:
    return _hasher.check_needs_rehash(password_hash)


@cache
def _dummy_hash() -> str:
    return _hasher.hash(secrets.token_urlsafe(16))


def new_secret() -> str:
    """256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def new_api_token() -> str:
    return API_TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """Session and API tokens are stored as their SHA-256: a leaked table signs nobody in."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def tokens_match(expected: str | None, given: str | None) -> bool:
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode("utf-8"), given.encode("utf-8"))


def ip_prefix(address: str | None) -> str:
    """The network a client address belongs to: /24 for IPv4, /64 for IPv6.

    Rate limits count per prefix because one person usually has a whole IPv6
    /64 (and often several IPv4 addresses of one /24) to rotate through.
    """
    if not address:
        return "unknown"
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return "unknown"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))
