"""Opaque keyset-pagination cursors: a moment and a row id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.errors import DomainError

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class InvalidCursor(DomainError, ValueError):
    """A pagination cursor this server did not hand out."""


def encode_cursor(at: datetime, row_id: int) -> str:
    """An opaque keyset position: microseconds since the epoch, and a row id."""
    return f"{(as_utc(at) - _EPOCH) // timedelta(microseconds=1)}.{row_id}"


def decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    if not cursor:
        return None
    micros, _, row_id = cursor.partition(".")
    try:
        return _EPOCH + timedelta(microseconds=int(micros)), int(row_id)
    except (ValueError, OverflowError) as exc:
        raise InvalidCursor(cursor) from exc
