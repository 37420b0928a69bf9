"""Times as a person reads them (kit.local_time); static/time.js follows the same rules."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from mailbeacon.kit.local_time import (
    day_and_time,
    describe_time,
    local_midnight,
    zone_label,
    zone_named,
)

NOW = datetime(2026, 11, 30, 15, 30, 0, tzinfo=UTC)  # a Monday; 10:30 in New York
NEW_YORK = zone_named("America/New_York")


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (timedelta(seconds=20), "just now"),
        (timedelta(minutes=5), "5 min ago"),
        (timedelta(minutes=59, seconds=59), "59 min ago"),
        (timedelta(hours=2), "today 08:30"),
        # 23:30 the day before in New York, though the same day in UTC.
        (timedelta(hours=11), "yesterday 23:30"),
        (timedelta(days=3), "Fri 10:30"),
        (timedelta(days=20), "10 Nov 10:30"),
        (timedelta(days=400), "26 Oct 2025 11:30"),
        (-timedelta(minutes=10), "in 10 min"),
        (-timedelta(hours=20), "tomorrow 06:30"),
    ],
)
def test_times_read_relative_in_the_viewers_zone(ago: timedelta, text: str) -> None:
    assert describe_time(NOW - ago, NEW_YORK, NOW).text == text


def test_the_exact_time_names_the_zone_and_the_iso_form_stays_utc() -> None:
    shown = describe_time(datetime(2026, 11, 2, 14, 2, 5, 123456, tzinfo=UTC), NEW_YORK, NOW)
    assert shown.exact == "Mon 2 Nov 2026, 09:02:05 EST"
    assert shown.iso_utc == "2026-11-02T14:02:05Z"
    summer = describe_time(datetime(2026, 7, 1, 12, 0, tzinfo=UTC), NEW_YORK, NOW)
    assert summer.exact.endswith("08:00:00 EDT")


def test_naive_values_are_utc_and_unknown_zones_fall_back_to_utc() -> None:
    naive = datetime(2026, 11, 30, 9, 0)
    assert describe_time(naive, zone_named(""), NOW).text == "today 09:00"
    assert describe_time(naive, zone_named("Mars/Olympus"), NOW).exact.endswith("UTC")
    assert describe_time(naive, zone_named("Asia/Tokyo"), NOW).text == "yesterday 18:00"


def test_a_local_day_begins_at_local_midnight_whatever_the_clocks_do() -> None:
    # New York's days around the end of summer time: 24 hours, then 25.
    starts = [local_midnight(date(2026, 10, 31 + n) if n == 0 else date(2026, 11, n), NEW_YORK)
              for n in range(3)]  # fmt: skip
    assert starts[0] == datetime(2026, 10, 31, 4, tzinfo=UTC)
    assert starts[1] == datetime(2026, 11, 1, 4, tzinfo=UTC)
    assert starts[2] - starts[1] == timedelta(hours=25)
    # Santiago skips midnight (00:00 -> 01:00) on 6 Sep 2026: that day begins as the
    # clocks land (01:00), 24 hours after the day before began, and lasts 23 hours.
    santiago = zone_named("America/Santiago")
    begun = local_midnight(date(2026, 9, 6), santiago)
    assert begun == datetime(2026, 9, 6, 4, tzinfo=UTC)
    assert begun.astimezone(santiago).hour == 1
    assert begun - local_midnight(date(2026, 9, 5), santiago) == timedelta(hours=24)
    assert local_midnight(date(2026, 9, 7), santiago) - begun == timedelta(hours=23)


def test_a_charts_times_name_the_zone() -> None:
    at = datetime(2026, 11, 3, 2, 5, tzinfo=UTC)
    assert day_and_time(at, NEW_YORK) == "2 Nov 21:05"
    assert day_and_time(at, NEW_YORK, with_zone=True) == "2 Nov 21:05 EST"
    assert day_and_time(at, zone_named("")) == "3 Nov 02:05"
    assert (zone_label(NEW_YORK), zone_label(zone_named(""))) == ("America/New_York", "UTC")
