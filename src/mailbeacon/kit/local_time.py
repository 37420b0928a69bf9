"""Times as a person reads them: in their own zone, relative where that reads better.

``static/time.js`` follows the same rules in the browser (it keeps "5 min ago"
current and formats times before the server knows the viewer's zone); a change
here needs the same change there.
"""

from __future__ import annotations

import zoneinfo
from dataclasses import dataclass
from datetime import UTC, date, datetime, tzinfo
from functools import lru_cache

from mailbeacon.kit.clock import as_utc

# English names whatever the machine's locale (strftime's %a and %b follow it).
_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


@dataclass(frozen=True, slots=True)
class LocalTime:
    """What a page shows (``text``) and what hovering it tells (``exact``)."""

    text: str
    exact: str
    iso_utc: str


@lru_cache(maxsize=64)
def zone_named(name: str) -> tzinfo:
    """The zone of an IANA name; UTC for "" or a name this machine does not know."""
    if not name:
        return UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return UTC


def describe_time(value: datetime, zone: tzinfo, now: datetime) -> LocalTime:
    """``value`` for a reader in ``zone`` at ``now``: "just now", "5 min ago", "in 5 min",
    "today 14:02", "yesterday 14:02", "tomorrow 14:02", "Mon 14:02" (the past week),
    "3 Nov 14:02" (this year), else "3 Nov 2025 14:02"."""
    value, now = as_utc(value), as_utc(now)
    local, today = value.astimezone(zone), now.astimezone(zone).date()
    hm = f"{local.hour:02d}:{local.minute:02d}"
    seconds = (now - value).total_seconds()
    days = (today - local.date()).days
    if 0 <= seconds < 60:
        text = "just now"
    elif 60 <= seconds < 3600:
        text = f"{int(seconds // 60)} min ago"
    elif -3600 < seconds < 0:
        text = f"in {max(1, int(-seconds // 60))} min"
    elif days == 0:
        text = f"today {hm}"
    elif days == 1:
        text = f"yesterday {hm}"
    elif days == -1:
        text = f"tomorrow {hm}"
    elif 1 < days < 7:
        text = f"{_WEEKDAYS[local.weekday()]} {hm}"
    elif local.year == today.year:
        text = f"{local.day} {_MONTHS[local.month - 1]} {hm}"
    else:
        text = f"{local.day} {_MONTHS[local.month - 1]} {local.year} {hm}"
    exact = (
        f"{_WEEKDAYS[local.weekday()]} {local.day} {_MONTHS[local.month - 1]} {local.year}, "
        f"{hm}:{local.second:02d} {local.tzname() or ''}"
    ).rstrip()
    iso = value.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return LocalTime(text=text, exact=exact, iso_utc=iso)


def describe_date(value: datetime, zone: tzinfo) -> LocalTime:
    """A day (an expiry, say) for a reader in ``zone``: "30 Dec 2026"."""
    local = as_utc(value).astimezone(zone)
    text = f"{local.day} {_MONTHS[local.month - 1]} {local.year}"
    exact = describe_time(value, zone, value).exact
    iso = as_utc(value).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    return LocalTime(text=text, exact=exact, iso_utc=iso)


def day_and_time(value: datetime, zone: tzinfo, *, with_zone: bool = False) -> str:
    """A short absolute time for a reader in ``zone`` (a chart's axis): "3 Nov 14:02",
    or "3 Nov 14:02 EST" ``with_zone``."""
    local = as_utc(value).astimezone(zone)
    text = f"{local.day} {_MONTHS[local.month - 1]} {local.hour:02d}:{local.minute:02d}"
    return f"{text} {local.tzname() or ''}".rstrip() if with_zone else text


def local_midnight(day: date, zone: tzinfo) -> datetime:
    """The instant (aware, UTC) ``day`` begins in ``zone``. Where the clocks skip
    midnight, the day begins when they land (a local midnight that never was, read
    with the offset before the change, is that very instant)."""
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def zone_label(zone: tzinfo) -> str:
    """The zone's IANA name as a page names it ("America/New_York", "UTC")."""
    return str(getattr(zone, "key", None) or zone.tzname(None) or "UTC")
