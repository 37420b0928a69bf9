"""Reading IMAPClient's answers: untagged responses, FETCH items, flags and dates.

Pure functions, apart from ``sync/imap.py`` so that the client stays about talking.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any


def any_change(responses: Sequence[Any]) -> bool:
    """Whether untagged responses report new, expunged or re-flagged mail (RFC 3501 7.3-7.4)."""
    for response in responses:
        if isinstance(response, tuple) and len(response) >= 2:
            kind = response[1]
            if isinstance(kind, bytes) and kind.upper() in (b"EXISTS", b"EXPUNGE", b"FETCH"):
                return True
    return False


def header_item(entry: dict[bytes, Any]) -> bytes | None:
    """The header octets of a FETCH answer, whichever BODY[HEADER...] item carried them."""
    for key, value in entry.items():
        if isinstance(key, bytes) and key.startswith(b"BODY[HEADER") and isinstance(value, bytes):
            return value
    return None


def as_text(value: object) -> str:
    return value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)


def as_utc(value: object) -> dt.datetime:
    """An INTERNALDATE as an aware UTC datetime."""
    if isinstance(value, dt.datetime):
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)
    # A server that sends no INTERNALDATE is broken; the epoch marks that plainly.
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
