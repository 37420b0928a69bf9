"""Password hashing, random tokens, CSRF comparison and sign-in rate limits."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from dataclasses import dataclass
from datetime import timedelta
from functools import cache

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# argon2-cffi's defaults are RFC 9106's "second recommended option" (argon2id,
# t=3, 64 MiB, p=4): about a tenth of a second per hash on a current server.
_hasher = PasswordHasher()

PASSWORD_MIN_CHARS = 8
# Bounds the work an anonymous request can ask of the hasher.
PASSWORD_MAX_CHARS = 1024

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


EMAIL_LIMIT = RateLimit(failures=5, window=timedelta(minutes=15))
IP_LIMIT = RateLimit(failures=20, window=timedelta(minutes=15))


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
