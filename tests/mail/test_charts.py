"""The server-drawn charts: an email's opens and clicks per recipient over time, and the
Mail tab's last 30 days; people and machines apart, and the figures in words."""

from __future__ import annotations

import html
import re
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest
from sqlalchemy import update

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.local_time import local_midnight
from mailbeacon.mail.charts import RATE_DAYS
from mailbeacon.models import Message, User
from tests.client import sign_in, use_demo_mailbox
from tests.factories.accounts import create_user
from tests.factories.hits import CHROME, SCANNER, THUNDERBIRD, hit, record
from tests.factories.mail import send_mail

pytestmark = pytest.mark.asyncio


def _sent_hours_ago(database: Database, message_id: int, hours: float) -> None:
    with database.unit_of_work() as s:
        s.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(created_at=utcnow() - timedelta(hours=hours))
        )


def _sent_at(database: Database, message_id: int, at: datetime) -> None:
    with database.unit_of_work() as s:
        s.execute(update(Message).where(Message.id == message_id).values(created_at=at, sent_at=at))


def _live_in(database: Database, user_id: int, zone: str) -> None:
    with database.unit_of_work() as s:
        s.get_one(User, user_id).time_zone = zone


def _figure(page: str, css_class: str) -> str:
    found = re.search(rf'<figure class="mb-chart {css_class}".*?</figure>', page, re.S)
    assert found, css_class
    return found.group(0)


def _rows(figure: str) -> list[list[str]]:
    return [
        [html.unescape(re.sub(r"<[^>]+>", "", cell)).strip()
         for cell in re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row)]
        for row in re.findall(r"<tr data-chart-row>(.*?)</tr>", figure, re.S)
    ]  # fmt: skip


async def test_an_emails_chart_draws_each_persons_opens_and_clicks_and_machines_apart(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    runtime = app.runtime
    user_id = create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    sent = send_mail(database, runtime, user_id, ("Ann Buyer <ann@example.org>", "bob@example.org"))
    quiet = send_mail(database, runtime, user_id, ("carl@example.org",), subject="Quiet")
    _sent_hours_ago(database, sent.message_id, 3)
    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.org"]
    now = time.time()
    record(
        runtime,
        hit(ann, at=now - 7200, ua=THUNDERBIRD),
        hit(ann, at=now - 600, ua=CHROME, ip_prefix="198.51.100.0/24"),
        hit(ann, "click", at=now - 590, position=0, ua=CHROME, ip_prefix="198.51.100.0/24"),
        hit(bob, "click", at=now - 3000, position=1, ua=SCANNER),
    )
    page = (await client.get(f"/mail/{sent.message_id}")).text
    figure = _figure(page, "mb-activity-chart")
    assert 'role="img" aria-labelledby="activity-title activity-desc"' in figure
    desc = html.unescape(re.search(r'<desc id="activity-desc">(.*?)</desc>', figure).group(1))  # type: ignore[union-attr]
    assert "Ann Buyer: 2 opens and 1 click by people" in desc
    assert "bob@example.org: 0 opens and 0 clicks by people" in desc
    assert "Machines: 1 hit, shown apart and not counted" in desc
    # What is drawn is what was stored: two opens and a click on Ann's lane, the
    # scanner's click on the machines' lane only.
    assert figure.count('class="mb-mark-open"') == 2
    assert figure.count('class="mb-mark-click"') == 1
    assert figure.count('class="mb-mark-machine"') == 1
    assert "Ann Buyer opened" in figure and "A machine&#39;s click (scanner)" in figure
    assert _rows(figure) == [["Ann Buyer", "2", "1", "0"], ["bob@example.org", "0", "0", "1"]]

    # Nothing happened yet: no chart, rather than an empty one.
    quiet_page = (await client.get(f"/mail/{quiet.message_id}")).text
    assert "mb-activity-chart" not in quiet_page


async def test_the_mail_tab_shows_the_last_30_days_rates_by_people_and_machines_apart(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    runtime = app.runtime
    user_id = create_user(database)
    other = create_user(database, "olga@example.net", org="Other", name="Olga")
    with database.unit_of_work() as s:
        account_service.use_demo_mailbox(s, s.get_one(User, other), port=2525)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    assert "mb-rates-chart" not in (await client.get("/mail")).text  # nothing sent yet

    today = send_mail(
        database, runtime, user_id, ("ann@example.org", "bob@example.org", "cy@example.org")
    )
    untracked = send_mail(
        database, runtime, user_id, ("dee@example.org",), open_tracking=False,
        link_tracking=False,
    )  # fmt: skip
    old = send_mail(database, runtime, user_id, ("old@example.org",))
    theirs = send_mail(database, runtime, other, ("ann@example.org",))
    _sent_hours_ago(database, old.message_id, 24 * 40)
    now = time.time()
    record(
        runtime,
        hit(today.copies["ann@example.org"], at=now - 60, ua=THUNDERBIRD),
        hit(today.copies["ann@example.org"], "click", at=now - 50, position=0),
        hit(today.copies["bob@example.org"], at=now - 40, ua=SCANNER),
        hit(old.copies["old@example.org"], at=now - 30, ua=THUNDERBIRD),
        hit(theirs.copies["ann@example.org"], at=now - 20, ua=THUNDERBIRD),
    )
    assert untracked.message_id

    page = (await client.get("/mail")).text
    figure = _figure(page, "mb-rates-chart")
    summary = html.unescape(re.search(r"<p data-chart-summary>(.*?)</p>", figure).group(1))  # type: ignore[union-attr]
    # Three tracked copies sent in the window (the untracked one, the one sent 40 days
    # ago and another user's are not among them); one opened and clicked by a person,
    # one fetched by a scanner only.
    assert "Opened by people: 1 of 3 copies with open tracking (33%)" in summary
    assert "Clicked by people: 1 of 3 copies with link tracking (33%)" in summary
    assert "1 copy only machines fetched (1 machine hit in all)" in summary
    day = utcnow().date().isoformat()
    assert _rows(figure) == [[day, "1 of 3", "1 of 3", "1"]]
    assert figure.count('class="mb-mark-open"') == 1
    assert figure.count('class="mb-bar-machine"') == 1
    assert f"{day}: 1 of 3 opened by people" in figure
    assert 'role="img" aria-labelledby="rates-title rates-desc"' in figure


NEW_YORK = ZoneInfo("America/New_York")
MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]


def _in_new_york(at: datetime) -> str:
    local = at.astimezone(NEW_YORK)
    return f"{local.day} {MONTHS[local.month - 1]} {local.hour:02d}:{local.minute:02d}"


async def test_the_charts_follow_the_viewers_time_zone(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    runtime = app.runtime
    user_id = create_user(database)
    _live_in(database, user_id, "America/New_York")
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    # Two emails the same UTC day: at 02:00 UTC it is still the evening before in New
    # York, at 12:00 UTC it is that day's morning.
    utc_day = utcnow().date() - timedelta(days=5)
    night = datetime(utc_day.year, utc_day.month, utc_day.day, 2, tzinfo=UTC)
    evening = send_mail(database, runtime, user_id, ("ann@example.org",), subject="Evening")
    morning = send_mail(database, runtime, user_id, ("bob@example.org",), subject="Morning")
    _sent_at(database, evening.message_id, night)
    _sent_at(database, morning.message_id, night + timedelta(hours=10))
    # The 30 days are New York's: an email sent a minute before the first one began is
    # out, one sent as it began is in.
    first_day = utcnow().astimezone(NEW_YORK).date() - timedelta(days=RATE_DAYS - 1)
    first_start = local_midnight(first_day, NEW_YORK)
    early = send_mail(database, runtime, user_id, ("cy@example.org",), subject="Early")
    too_early = send_mail(database, runtime, user_id, ("dee@example.org",), subject="Too early")
    _sent_at(database, early.message_id, first_start)
    _sent_at(database, too_early.message_id, first_start - timedelta(minutes=1))
    record(
        runtime,
        hit(evening.copies["ann@example.org"], at=night.timestamp() + 1800, ua=THUNDERBIRD),
        hit(early.copies["cy@example.org"], at=time.time() - 60, ua=THUNDERBIRD),
    )

    figure = _figure((await client.get("/mail")).text, "mb-rates-chart")
    local_day = utc_day - timedelta(days=1)
    assert _rows(figure) == [
        [first_day.isoformat(), "1 of 1", "0 of 1", "0"],
        [local_day.isoformat(), "1 of 1", "0 of 1", "0"],
        [utc_day.isoformat(), "0 of 1", "0 of 1", "0"],
    ]
    assert "Day (America/New_York)" in figure
    assert f"{local_day.isoformat()}: 1 of 1 opened by people" in figure
    summary = html.unescape(re.search(r"<p data-chart-summary>(.*?)</p>", figure).group(1))  # type: ignore[union-attr]
    assert f"{first_day.isoformat()} to " in summary and "(America/New_York days)" in summary
    assert "Opened by people: 2 of 3 copies" in summary

    # The email's chart: its axis and its marks in New York time, said so.
    figure = _figure((await client.get(f"/mail/{evening.message_id}")).text, "mb-activity-chart")
    ticks = [html.unescape(t) for t in re.findall(r'class="mb-tick">([^<]*)</text>', figure)]
    # From the sending to an hour later (no event came later than that), in thirds.
    assert ticks == [_in_new_york(night + timedelta(minutes=20 * step)) for step in range(4)]
    assert ticks[0].endswith(("21:00", "22:00")) and "02:00" not in " ".join(ticks)
    opened = night + timedelta(minutes=30)
    zone_name = opened.astimezone(NEW_YORK).tzname()
    assert f"ann@example.org opened, {_in_new_york(opened)} {zone_name}</title>" in figure
    assert "times in America/New_York" in figure
    desc = html.unescape(re.search(r'<desc id="activity-desc">(.*?)</desc>', figure).group(1))  # type: ignore[union-attr]
    assert f"from {ticks[0]} to {ticks[-1]} (America/New_York)" in desc
