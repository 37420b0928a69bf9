"""Facts about network addresses that need no lookup."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable


def is_loopback_host(host: str) -> bool:
    """True for addresses of this machine (no DNS lookup: names other than localhost are remote)."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def client_address(
    peer: str | None, forwarded_for: Iterable[str], trusted_proxies: int
) -> str | None:
    """The client's address: the peer's, or the one the nearest untrusted hop gave.

    ``forwarded_for`` are the X-Forwarded-For header values in the order they came
    (several headers read as one list, RFC 9110 section 5.3). Each proxy appends
    the address it was connected from, so only the last ``trusted_proxies`` entries
    were written by proxies we trust; the entry before them is the client as our
    outermost proxy saw it. Anything further left is whatever the client sent and
    is never read. With fewer entries than trusted proxies, or an entry that is not
    an address, the request did not come the way we were told it would: the peer
    address is the only one known to be true.
    """
    if trusted_proxies <= 0:
        return peer
    entries = [e.strip() for value in forwarded_for for e in value.split(",") if e.strip()]
    if len(entries) < trusted_proxies:
        return peer
    return _bare_address(entries[-trusted_proxies]) or peer


def _bare_address(entry: str) -> str | None:
    """The IP address of an X-Forwarded-For entry, without a port some proxies add."""
    candidate = entry
    if candidate.startswith("["):  # "[2001:db8::1]:443"
        candidate = candidate[1:].partition("]")[0]
    elif candidate.count(":") == 1:  # "192.0.2.1:443"
        candidate = candidate.partition(":")[0]
    try:
        return str(ipaddress.ip_address(candidate))
    except ValueError:
        return None
