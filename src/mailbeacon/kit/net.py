"""Facts about network addresses that need no lookup."""

from __future__ import annotations

import ipaddress


def is_loopback_host(host: str) -> bool:
    """True for addresses of this machine (no DNS lookup: names other than localhost are remote)."""
    if host.lower().rstrip(".") in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
