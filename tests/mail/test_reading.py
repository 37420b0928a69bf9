"""The read side of tracking: the Mail tab's list, filters, hover lists, detail, timeline,
and the body made safe to show."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import update

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.cursors import InvalidCursor
from mailbeacon.mail import reading
from mailbeacon.mail.reading import (
    MailNotFound,
    mail_detail,
    mail_events,
    mail_page,
    mail_rows,
    safe_body_html,
)
from mailbeacon.mail.schemas import MailFilter
from mailbeacon.models import Message
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.service import TrackingService
from mailbeacon.tracking.tokens import TokenCodec
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import GMAIL_PROXY, SCANNER, hit, record
from tests.factories.mail import send_mail

BASE = "http://mb.test"


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


def age(database: Database, message_id: int, minutes: int) -> None:
    """Backdate an email so the list order is known."""
    with database.unit_of_work() as s:
        s.execute(
            update(Message)
            .where(Message.id == message_id)
            .values(created_at=utcnow() - timedelta(minutes=minutes))
        )


def test_the_list_is_newest_first_and_pages_both_ways(database: Database, runtime: Runtime) -> None:
    sally = make_demo_sender(database)
    ids = []
    for i in range(7):
        sent = send_mail(database, runtime, sally, subject=f"Email {i}")
        age(database, sent.message_id, 100 - i)
        ids.append(sent.message_id)
    newest_first = list(reversed(ids))
    with database.sessions() as s:
        first = mail_page(s, sally, limit=3)
        assert [m.id for m in first.items] == newest_first[:3]
        assert first.newer_cursor is None and first.older_cursor
        second = mail_page(s, sally, limit=3, before=first.older_cursor)
        assert [m.id for m in second.items] == newest_first[3:6]
        third = mail_page(s, sally, limit=3, before=second.older_cursor)
        assert [m.id for m in third.items] == newest_first[6:]
        assert third.older_cursor is None and third.newer_cursor
        back = mail_page(s, sally, limit=3, after=third.newer_cursor)
        assert [m.id for m in back.items] == newest_first[3:6]
        assert back.newer_cursor and back.older_cursor
        with pytest.raises(InvalidCursor):
            mail_page(s, sally, before="not-a-cursor")


def test_icons_show_what_happened_and_hover_lists_every_occasion_apart_from_machines(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally, ("ann@example.org", "bob@example.com"))
    quiet = send_mail(database, runtime, sally, subject="Nobody looked")
    untracked = send_mail(
        database, runtime, sally, subject="Untracked", open_tracking=False, link_tracking=False
    )
    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.com"]
    t0 = time.time()
    record(
        runtime,
        hit(ann, at=t0),
        hit(bob, at=t0 + 20, ua=GMAIL_PROXY, network="google"),
        hit(bob, at=t0 + 40, ua="Mozilla/5.0", network="apple"),
        hit(ann, at=t0 + 60, ua=SCANNER),
        hit(ann, at=t0 + 80, viewer=sally),
        hit(ann, "click", at=t0 + 100, position=1),
    )
    with database.sessions() as s:
        rows = {m.id: m for m in mail_page(s, sally).items}
    row = rows[sent.message_id]
    assert (row.open_count, row.click_count, row.machine_event_count) == (2, 1, 3)
    assert (row.open_icon.state, row.link_icon.state) == ("done", "done")
    opened = [(e.recipient, e.judged) for e in row.open_icon.occasions]
    assert opened == [
        ("bob@example.com", "opened via an image proxy"),
        ("ann@example.org", "opened"),
    ]
    machine = [(e.recipient, e.judged) for e in row.open_icon.machine]
    assert machine == [
        ("ann@example.org", "your own view"),
        ("ann@example.org", "security scanner"),
        ("bob@example.com", "Apple Mail privacy fetch, open not confirmed"),
    ]
    (click,) = row.link_icon.occasions
    assert (click.recipient, click.judged, click.link_url, click.link_text) == (
        "ann@example.org",
        "clicked",
        "https://example.com/pricing",
        "pricing",
    )
    assert {r.address: r.open_count for r in row.recipients} == {
        "ann@example.org": 1,
        "bob@example.com": 1,
    }
    assert rows[quiet.message_id].open_icon.state == "waiting"
    assert rows[quiet.message_id].link_icon.state == "waiting"
    assert rows[untracked.message_id].open_icon.state == "off"
    assert rows[untracked.message_id].link_icon.state == "off"


def test_hover_lists_are_bounded_and_say_how_much_more_there_is(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally)
    ann = sent.copies["ann@example.org"]
    t0 = time.time()
    record(
        runtime, *(hit(ann, at=t0 + 11 * i, ua=SCANNER) for i in range(reading.HOVER_EVENTS + 5))
    )
    with database.sessions() as s:
        (row,) = mail_rows(s, sally, [sent.message_id])
    assert len(row.open_icon.machine) == reading.HOVER_EVENTS
    assert row.more_events == 5


@pytest.mark.parametrize("candidates", [reading.SEARCH_CANDIDATES, 1])
def test_filters_and_search(
    database: Database, runtime: Runtime, candidates: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a bound of 1, every search matching two emails or more takes the other
    # road (walking the newest emails): both must find the same.
    monkeypatch.setattr(reading, "SEARCH_CANDIDATES", candidates)
    sally = make_demo_sender(database)
    opened = send_mail(database, runtime, sally, ("ann@example.org",), subject="Pricing 100%")
    clicked = send_mail(database, runtime, sally, ("bob@example.com",), subject="Demo")
    waiting = send_mail(
        database, runtime, sally, ("carl@example.net",), subject="Quote", bcc=("dora@hidden.org",)
    )
    untracked = send_mail(
        database, runtime, sally, ("ann@example.org",), subject="Plain",
        open_tracking=False, link_tracking=False,
    )  # fmt: skip
    t0 = time.time()
    record(
        runtime,
        hit(opened.copies["ann@example.org"], at=t0),
        hit(clicked.copies["bob@example.com"], "click", position=0, at=t0 + 20),
        hit(waiting.copies["carl@example.net"], ua=SCANNER, at=t0 + 40),
    )

    def ids(mail_filter: MailFilter | None = None, q: str = "") -> set[int]:
        with database.sessions() as s:
            return {m.id for m in mail_page(s, sally, mail_filter=mail_filter, q=q).items}

    every = {opened.message_id, clicked.message_id, waiting.message_id, untracked.message_id}
    assert ids() == every
    assert ids(MailFilter.TRACKED) == every - {untracked.message_id}
    assert ids(MailFilter.OPENED) == {opened.message_id}
    assert ids(MailFilter.CLICKED) == {clicked.message_id}
    # A machine's hit is not an open.
    assert ids(MailFilter.NOT_OPENED) == {clicked.message_id, waiting.message_id}
    assert ids(q="pricing") == {opened.message_id}
    assert ids(q="ANN@example") == {opened.message_id, untracked.message_id}
    assert ids(q="dora@hidden") == {waiting.message_id}  # Bcc recipients are searchable
    assert ids(q="100%") == {opened.message_id}
    assert ids(q="%") == {opened.message_id}  # a literal percent sign, not a wildcard
    assert ids(q="_") == set()
    assert ids(MailFilter.OPENED, q="demo") == set()


def test_the_detail_has_per_recipient_figures_clicks_per_link_and_the_timeline(
    database: Database, runtime: Runtime
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, runtime, sally, ("ann@example.org", "bob@example.com"))
    ann, bob = sent.copies["ann@example.org"], sent.copies["bob@example.com"]
    t0 = time.time()
    record(
        runtime,
        hit(ann, at=t0),
        hit(ann, at=t0 + 120),
        hit(ann, "click", position=0, at=t0 + 140),
        hit(ann, "click", position=0, at=t0 + 160, ip_prefix="198.51.100.0/24"),
        hit(bob, "click", position=1, at=t0 + 180, ua=SCANNER),
    )
    with database.sessions() as s:
        detail = mail_detail(s, sally, sent.message_id, links=runtime.tracking)
    by_address = {r.address: r for r in detail.recipients}
    a, b = by_address["ann@example.org"], by_address["bob@example.com"]
    assert (a.open_count, a.click_count, a.status, a.decision) == (2, 2, "sent", "tracked")
    assert a.first_open_at is not None and a.last_open_at is not None
    assert a.last_open_at - a.first_open_at == timedelta(seconds=120)
    assert [(link.position, link.click_count) for link in a.links] == [(0, 2)]
    assert [(link.position, link.click_count, link.machine_click_count) for link in b.links] == [
        (1, 0, 1)
    ]
    assert [(link.url, link.click_count, link.machine_click_count) for link in detail.links] == [
        ("https://example.com/offer", 2, 0),
        ("https://example.com/pricing", 0, 1),
    ]
    timeline = [(e.kind, e.recipient, e.label) for e in detail.timeline]
    assert timeline == [
        ("click", "bob@example.com", "scanner"),
        ("click", "ann@example.org", "human"),
        ("click", "ann@example.org", "human"),
        ("open", "ann@example.org", "human"),
        ("open", "ann@example.org", "human"),
    ]
    assert all(e.reason for e in detail.timeline)
    assert detail.body_html is not None and "/t/" not in detail.body_html
    with database.sessions() as s:
        page = mail_events(s, sally, sent.message_id, limit=2)
        assert [e.id for e in page.items] == [e.id for e in detail.timeline[:2]]
        rest = mail_events(s, sally, sent.message_id, before=page.older_cursor, limit=10)
        assert [e.id for e in rest.items] == [e.id for e in detail.timeline[2:]]
        assert rest.older_cursor is None


def test_another_users_email_does_not_exist(database: Database, runtime: Runtime) -> None:
    sally = make_demo_sender(database)
    tom = make_demo_sender(database, "tom@example.com", name="Tom")  # same organisation
    sent = send_mail(database, runtime, sally)
    record(runtime, hit(sent.copies["ann@example.org"]))
    with database.sessions() as s:
        assert mail_page(s, tom).items == []
        assert mail_page(s, tom, q="ann").items == []
        assert mail_rows(s, tom, [sent.message_id]) == []
        with pytest.raises(MailNotFound):
            mail_detail(s, tom, sent.message_id, links=runtime.tracking)
        with pytest.raises(MailNotFound):
            mail_events(s, tom, sent.message_id)


# ------------------------------------------------------------------ the body, made safe

CODEC = TokenCodec([(1, bytes(range(64)))])
LINKS = TrackingService(CODEC, BASE)


def test_the_body_never_carries_a_pixel_or_a_tracked_link_and_nothing_runs() -> None:
    pixel = f"{BASE}/t/o/{CODEC.mint_open_token(5)}.gif"
    tracked = f"{BASE}/t/c/{CODEC.mint_click_token(5, 0, 'https://example.com/a?b=1&c=2')}"
    body = (
        f'<p onclick="x()">Hi <a href="{tracked}">offer</a> <img src="{pixel}" width=1>'
        '<img src="https://cdn.example.com/logo.png" alt="Logo">'
        '<img src="https://other.example/t/o/abc.gif">'
        '<a href="http://mb.test/t/c/garbage">broken</a>'
        '<a href="javascript:alert(1)">js</a><a href="data:text/html,hi">data</a>'
        '<script>alert(1)</script><style>p{}</style><iframe src="https://x"></iframe>'
        '<p style="color: red; background-image: url(https://x/y.png)">styled</p></p>'
    )
    safe = safe_body_html(body, LINKS)
    assert "/t/" not in safe
    assert 'href="https://example.com/a?b=1&amp;c=2"' in safe
    assert "cdn.example.com" not in safe  # remote images only when asked for
    for gone in ("onclick", "<script", "javascript:", "data:text", "<iframe", "url("):
        assert gone not in safe
    assert 'style="color:red"' in safe
    with_images = safe_body_html(body, LINKS, remote_images=True)
    assert 'src="https://cdn.example.com/logo.png"' in with_images
    assert "/t/" not in with_images


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet=st.sampled_from(list("<>/=\"' abcimgsrhefpt.:")), max_size=80),
    st.integers(1, 2**31),
)
def test_no_rewriting_of_any_body_lets_a_pixel_or_tracked_link_of_ours_through(
    noise: str, copy_id: int
) -> None:
    pixel = f"{BASE}/t/o/{CODEC.mint_open_token(copy_id)}.gif"
    link = f"{BASE}/t/c/{CODEC.mint_click_token(copy_id, 0, 'https://example.com/')}"
    body = f'{noise}<img src="{pixel}">{noise}<a href="{link}">x</a><img src={pixel}>{noise}'
    for images in (False, True):
        safe = safe_body_html(body, LINKS, remote_images=images)
        # The noise may spell "/t/c/" as text; no attribute that loads or opens may.
        loaded = _URL_ATTRIBUTE.findall(safe)
        assert not [u for u in loaded if "/t/o/" in u or "/t/c/" in u], safe


_URL_ATTRIBUTE = re.compile(r'\b(?:src|href)="([^"]*)"')


@pytest.mark.parametrize(
    "disguise",
    [
        "{base}/x/../t/o/{token}.gif",
        "{base}\\t\\o\\{token}.gif",
        "//mb.test/t/o/{token}.gif",
        "../t/o/{token}.gif",
        "/t/o/{token}.gif",
        "HTTP://MB.TEST/t/o/{token}.gif",
        " \t{base}/t/o/{token}.gif\n",
    ],
)
def test_a_quoted_pixel_in_any_spelling_a_browser_would_load_is_removed(disguise: str) -> None:
    token = CODEC.mint_open_token(7)
    src = disguise.format(base=BASE, token=token)
    safe = safe_body_html(f'<p>Earlier:</p><img src="{src}">', LINKS, remote_images=True)
    assert "<img" not in safe or 'src="' not in safe, safe


def test_plain_text_bodies_get_their_destinations_back() -> None:
    link = f"{BASE}/t/c/{CODEC.mint_click_token(3, 0, 'https://example.com/x')}"
    text = f"See {link} today, or http://mb.test/t/c/broken."
    restored = LINKS.restore_in_text(text)
    assert restored == "See https://example.com/x today, or [tracking link removed]."
