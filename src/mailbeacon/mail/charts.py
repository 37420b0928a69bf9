"""Small charts drawn on the server as SVG (no script, nothing fetched at run time).

Two of them: on an email's page, each recipient's opens and clicks by people over
time, machine hits on a lane of their own; on the Mail tab, the last 30 days' open
and click rates by people, with the copies only machines fetched shown apart. Each
comes with its words (an SVG title and description, and a table) so that the figures
reach a screen reader and a text browser too. Only the sender's own data is read.

Both follow the viewer's time zone, like every other time on the pages: the axis and
the marks' titles are in local time, and the 30 days are the viewer's local days (a copy
sent at 02:00 UTC belongs to the day before in New York). The zone is named in each
chart's description.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, tzinfo
from typing import Any, cast

from sqlalchemy import Table, and_, case, func, select
from sqlalchemy.orm import Session

from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.local_time import day_and_time, local_midnight, zone_label
from mailbeacon.models import CopyStatus, Message, RecipientCopy, TrackingEvent
from mailbeacon.models.event import PERSON_LABELS

_messages = cast(Table, Message.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_events = cast(Table, TrackingEvent.__table__)

# Events drawn per email at most (the newest); a scanner that hammered a link does not
# make the page megabytes. The counts in the words are the stored figures, never cut.
MAX_CHART_EVENTS = 2000
RATE_DAYS = 30

# Geometry, in SVG user units (the SVG scales to its box).
WIDTH = 640
LABEL_WIDTH = 150
LANE_HEIGHT = 26
TOP = 8
AXIS_HEIGHT = 22
PLOT_RIGHT = WIDTH - 12


def _plural(n: int, word: str, words: str = "") -> str:
    return f"{n} {word if n == 1 else (words or word + 's')}"


# ------------------------------------------------------------------ one email


@dataclass(frozen=True, slots=True)
class Mark:
    x: float
    kind: str  # open, click, machine
    title: str


@dataclass(slots=True)
class Lane:
    name: str
    y: float
    opens: int = 0
    clicks: int = 0
    machine: int = 0
    marks: list[Mark] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class ActivityChart:
    """Each recipient's lane of opens and clicks by people, and the machines' lane."""

    lanes: list[Lane]
    machines: Lane
    ticks: list[Tick]
    height: float
    axis_y: float
    description: str
    zone: str  # the zone the axis is in, as the caption names it


@dataclass(frozen=True, slots=True)
class ChartRecipient:
    copy_id: int
    name: str  # as shown: the display name, else the address
    opens: int
    clicks: int
    machine: int


def activity_chart(
    session: Session,
    message_id: int,
    sent_at: datetime,
    recipients: list[ChartRecipient],
    zone: tzinfo,
) -> ActivityChart | None:
    """The chart of one email (already known to be the sender's), its times in the
    viewer's ``zone``; None before any event."""
    if not any(r.opens or r.clicks or r.machine for r in recipients):
        return None
    rows = list(
        session.execute(
            select(_events.c.copy_id, _events.c.kind, _events.c.label, _events.c.occurred_at)
            .where(_events.c.message_id == message_id)
            .order_by(_events.c.occurred_at.desc(), _events.c.id.desc())
            .limit(MAX_CHART_EVENTS)
        )
    )
    start = as_utc(sent_at)
    times = [as_utc(r.occurred_at) for r in rows]
    end = max([*times, start + timedelta(hours=1)])
    span = (end - start).total_seconds() or 1.0

    def x_of(at: datetime) -> float:
        share = min(max((at - start).total_seconds() / span, 0.0), 1.0)
        return round(LABEL_WIDTH + share * (PLOT_RIGHT - LABEL_WIDTH), 1)

    lanes: dict[int, Lane] = {}
    for index, r in enumerate(recipients):
        lanes[r.copy_id] = Lane(
            name=r.name,
            y=TOP + index * LANE_HEIGHT + LANE_HEIGHT / 2,
            opens=r.opens,
            clicks=r.clicks,
            machine=r.machine,
        )
    machines = Lane(
        name="Machines",
        y=TOP + len(recipients) * LANE_HEIGHT + LANE_HEIGHT / 2,
        machine=sum(r.machine for r in recipients),
    )
    for row, at in zip(rows, times, strict=True):
        lane = lanes.get(row.copy_id)
        if lane is None:
            continue
        when = day_and_time(at, zone, with_zone=True)
        if row.label in PERSON_LABELS:
            verb = "opened" if row.kind == "open" else "clicked a link"
            lane.marks.append(Mark(x_of(at), str(row.kind), f"{lane.name} {verb}, {when}"))
        else:
            what = "open" if row.kind == "open" else "click"
            machines.marks.append(
                Mark(x_of(at), "machine", f"A machine's {what} ({row.label}) on {lane.name}'s "
                     f"copy, {when}: not counted")
            )  # fmt: skip
    axis_y = TOP + (len(recipients) + 1) * LANE_HEIGHT
    ticks = [
        Tick(x_of(at), day_and_time(at, zone))
        for at in (start + (end - start) * step / 3 for step in range(4))
    ]
    words = [
        f"{r.name}: {_plural(r.opens, 'open')} and {_plural(r.clicks, 'click')} by people"
        for r in recipients
    ]
    description = (
        f"Opens and clicks by people over time, per recipient, from "
        f"{day_and_time(start, zone)} to {day_and_time(end, zone)} ({zone_label(zone)}). "
        + "; ".join(words)
        + f". Machines: {_plural(machines.machine, 'hit')}, shown apart and not counted."
    )
    return ActivityChart(
        lanes=list(lanes.values()),
        machines=machines,
        ticks=ticks,
        height=axis_y + AXIS_HEIGHT,
        axis_y=axis_y,
        description=description,
        zone=zone_label(zone),
    )


# ------------------------------------------------------------------ the last 30 days


@dataclass(frozen=True, slots=True)
class Day:
    day: str  # YYYY-MM-DD, the viewer's local day
    x: float
    open_tracked: int
    opened: int
    link_tracked: int
    clicked: int
    machine_only: int  # copies that only machines fetched (no person opened or clicked)
    machine_hits: int

    @property
    def open_rate(self) -> float | None:
        return self.opened / self.open_tracked if self.open_tracked else None

    @property
    def click_rate(self) -> float | None:
        return self.clicked / self.link_tracked if self.link_tracked else None


@dataclass(frozen=True, slots=True)
class RatesChart:
    days: list[Day]
    open_line: str  # SVG polyline points
    click_line: str
    bar_width: float
    plot_top: float
    plot_bottom: float
    machine_top: float
    machine_bottom: float
    machine_scale: float
    height: float
    first_day: str
    last_day: str
    totals: Day
    description: str
    zone: str  # the zone whose days these are, as the caption names it

    def y_rate(self, rate: float) -> float:
        return round(self.plot_bottom - rate * (self.plot_bottom - self.plot_top), 1)

    def machine_bar(self, day: Day) -> float:
        return round(day.machine_only * self.machine_scale, 1)


def _percent(part: int, whole: int) -> str:
    return f"{round(100 * part / whole)}%" if whole else "—"


def recent_rates(session: Session, user_id: int, now: datetime, zone: tzinfo) -> RatesChart | None:
    """Per day of sending (the viewer's local day in ``zone``) over the last ``RATE_DAYS``
    days: of the delivered copies with open (link) tracking, the share a person opened
    (clicked); and the copies only machines fetched, apart. None when nothing tracked
    was sent in that time."""
    today = as_utc(now).astimezone(zone).date()
    first = today - timedelta(days=RATE_DAYS - 1)
    # Each local day's start as a UTC instant, worked out here rather than in SQL: the
    # two databases share no time zone arithmetic, and a day is 23 or 25 hours long
    # where the clocks change. A copy's day is the last start at or before its sending.
    starts = [local_midnight(first + timedelta(days=index), zone) for index in range(RATE_DAYS)]
    c = _copies.c
    created = _messages.c.created_at
    day = case(
        *((created < starts[index], index - 1) for index in range(1, RATE_DAYS)),
        else_=RATE_DAYS - 1,
    )

    def count(condition: Any) -> Any:
        return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)

    rows = session.execute(
        select(
            day.label("day"),
            count(c.open_tracked.is_(True)),
            count(and_(c.open_tracked.is_(True), c.open_count > 0)),
            count(c.links_tracked.is_(True)),
            count(and_(c.links_tracked.is_(True), c.click_count > 0)),
            count(and_(c.machine_event_count > 0, c.open_count == 0, c.click_count == 0)),
            func.coalesce(func.sum(c.machine_event_count), 0),
        )
        .join(_messages, _messages.c.id == c.message_id)
        .where(
            _messages.c.user_id == user_id,
            _messages.c.is_preview.is_(False),
            created >= starts[0],
            c.status.in_([CopyStatus.SENT, CopyStatus.BOUNCED]),
            (c.open_tracked.is_(True)) | (c.links_tracked.is_(True)),
        )
        .group_by(day)
    )
    found = {_day_of(first, int(r[0])): tuple(int(v) for v in r[1:]) for r in rows}
    if not found:
        return None
    plot_left, plot_right = 40.0, float(PLOT_RIGHT)
    step = (plot_right - plot_left) / RATE_DAYS
    days: list[Day] = []
    for index in range(RATE_DAYS):
        name = _day_of(first, index)
        values = found.get(name, (0, 0, 0, 0, 0, 0))
        days.append(Day(name, round(plot_left + step * (index + 0.5), 1), *values))
    totals = Day(
        "total",
        0.0,
        *(sum(getattr(d, name) for d in days) for name in (
            "open_tracked", "opened", "link_tracked", "clicked", "machine_only", "machine_hits"
        )),
    )  # fmt: skip
    plot_top, plot_bottom = 8.0, 78.0
    machine_top, machine_bottom = 96.0, 116.0
    most = max(d.machine_only for d in days)

    def line(rates: list[tuple[float, float | None]]) -> str:
        return " ".join(
            f"{x},{round(plot_bottom - rate * (plot_bottom - plot_top), 1)}"
            for x, rate in rates
            if rate is not None
        )

    chart = RatesChart(
        days=days,
        open_line=line([(d.x, d.open_rate) for d in days]),
        click_line=line([(d.x, d.click_rate) for d in days]),
        bar_width=round(step * 0.6, 1),
        plot_top=plot_top,
        plot_bottom=plot_bottom,
        machine_top=machine_top,
        machine_bottom=machine_bottom,
        machine_scale=(machine_bottom - machine_top) / most if most else 0.0,
        height=machine_bottom + 18,
        first_day=days[0].day,
        last_day=days[-1].day,
        totals=totals,
        description=(
            f"Open and click rates by people, per day of sending, {days[0].day} to "
            f"{days[-1].day} ({zone_label(zone)} days). Opened by people: {totals.opened} of "
            f"{totals.open_tracked} copies with open tracking "
            f"({_percent(totals.opened, totals.open_tracked)}). Clicked by people: "
            f"{totals.clicked} of {totals.link_tracked} copies with link tracking "
            f"({_percent(totals.clicked, totals.link_tracked)}). Shown apart, not counted: "
            f"{_plural(totals.machine_only, 'copy', 'copies')} only machines fetched "
            f"({_plural(totals.machine_hits, 'machine hit')} in all)."
        ),
        zone=zone_label(zone),
    )
    return chart


def _day_of(first: date, index: int) -> str:
    return (first + timedelta(days=index)).isoformat()
