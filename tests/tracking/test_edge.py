"""The tracking edge end to end: real ASGI app, real journal and consumer, real database."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import (
    LinkClickStat,
    MailboxConnection,
    Message,
    RecipientCopy,
    Security,
    TrackingEvent,
)
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.edge import PIXEL_GIF, VIEWER_COOKIE
from mailbeacon.tracking.hits import new_uid
from tests.client import stored_before_answer
from tests.factories.accounts import make_user
from tests.factories.mail import make_message

CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)


@pytest_asyncio.fixture
async def app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    application = MailbeaconApp(Runtime.from_settings(settings))
    await application.ingest.start()
    yield application
    await application.ingest.stop()
    application.runtime.database.dispose()


def client(app: MailbeaconApp, ip: str = "203.0.113.9") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=stored_before_answer(app), client=(ip, 50000))
    return httpx.AsyncClient(
        transport=transport, base_url="http://mb.test", headers={"user-agent": CHROME}
    )


def seed(
    db: Database, recipients: tuple[str, ...] = ("ann@example.org",)
) -> tuple[int, list[int], int]:
    with db.unit_of_work() as s:
        user = make_user(s)
        message, copies = make_message(s, user, recipients=recipients)
        return message.id, [c.id for c in copies], user.id


def count_events(db: Database) -> int:
    with db.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(TrackingEvent)) or 0)


@pytest.mark.asyncio
async def test_pixel_answers_a_gif_and_the_open_is_stored(
    app: MailbeaconApp, database: Database
) -> None:
    message_id, (copy_id,), _ = seed(database)
    token = app.runtime.codec.mint_open_token(copy_id)
    async with client(app) as c:
        r = await c.get(f"/t/o/{token}.gif")
    assert r.status_code == 200
    assert r.content == PIXEL_GIF and len(r.content) == 43
    assert r.headers["content-type"] == "image/gif"
    assert r.headers["cache-control"] == "no-store, no-cache, must-revalidate, max-age=0"
    assert "set-cookie" not in r.headers and "etag" not in r.headers
    # No sleep: the client gets the answer once the consumer has stored the hit.
    with database.sessions() as s:
        event = s.scalars(select(TrackingEvent)).one()
        copy = s.get(RecipientCopy, copy_id)
        message = s.get(Message, message_id)
    assert (event.kind, event.label, event.copy_id) == ("open", "human", copy_id)
    assert event.ip_prefix == "203.0.113.0/24"  # never the raw address
    assert copy is not None and message is not None
    assert copy.open_count == 1 and copy.first_open_at == event.occurred_at
    assert message.open_count == 1 and message.last_open_at == event.occurred_at


@pytest.mark.asyncio
async def test_hit_uids_are_unique_and_ordered_by_time(
    app: MailbeaconApp, database: Database
) -> None:
    """The uid starts with the hit's millisecond (what keeps the uid index's inserts at its
    end); the rest is random, so hits of one millisecond still differ."""
    _, (copy_id,), _ = seed(database)
    token = app.runtime.codec.mint_open_token(copy_id)
    async with client(app) as c:
        for _ in range(5):
            await c.get(f"/t/o/{token}.gif")
            await asyncio.sleep(0.002)
    with database.sessions() as s:
        events = s.scalars(select(TrackingEvent).order_by(TrackingEvent.occurred_at)).all()
    uids = [e.uid for e in events]
    assert len(set(uids)) == 5 and all(len(u) == 32 for u in uids)
    assert uids == sorted(uids)
    for event in events:
        # Stored to the microsecond, which may round across a millisecond.
        assert abs(int(event.uid[:12], 16) - event.occurred_at.timestamp() * 1000) <= 1
    assert len({u[12:] for u in uids}) == 5
    assert new_uid(1.0) != new_uid(1.0) and new_uid(1.0)[:12] == new_uid(1.0009)[:12]


@pytest.mark.asyncio
async def test_invalid_pixel_gets_the_same_answer_and_is_not_recorded(
    app: MailbeaconApp, database: Database
) -> None:
    _, (copy_id,), _ = seed(database)
    good = app.runtime.codec.mint_open_token(copy_id)
    async with client(app) as c:
        ok = await c.get(f"/t/o/{good}.gif")
        for bad in (good[:-1] + ("A" if good[-1] != "A" else "B"), "nonsense", good[:20], ""):
            r = await c.get(f"/t/o/{bad}.gif")
            assert r.status_code == 200 and r.content == ok.content
            assert r.headers == ok.headers
    assert count_events(database) == 1


@pytest.mark.asyncio
async def test_head_on_the_pixel_is_labelled_prefetch_and_never_counts_as_an_open(
    app: MailbeaconApp, database: Database
) -> None:
    _, (copy_id,), _ = seed(database)
    token = app.runtime.codec.mint_open_token(copy_id)
    async with client(app) as c:
        r = await c.head(f"/t/o/{token}.gif")
    assert r.status_code == 200 and r.content == b""
    assert r.headers["content-type"] == "image/gif"
    with database.sessions() as s:
        event = s.scalars(select(TrackingEvent)).one()
        copy = s.get(RecipientCopy, copy_id)
    assert event.label == "prefetch" and event.is_head
    assert copy is not None and copy.open_count == 0 and copy.machine_event_count == 1


@pytest.mark.asyncio
async def test_click_redirects_to_the_sealed_destination_and_counts_per_link(
    app: MailbeaconApp, database: Database
) -> None:
    message_id, (copy_id,), _ = seed(database)
    url = "https://example.com/pricing?plan=team&x=%C3%A9#top"
    token = app.runtime.codec.mint_click_token(copy_id, 2, url)
    async with client(app) as c:
        r = await c.get(f"/t/c/{token}")
    assert r.status_code == 302
    assert r.headers["location"] == url
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["referrer-policy"] == "no-referrer"
    with database.sessions() as s:
        stat = s.get(LinkClickStat, (copy_id, 2))
        message = s.get(Message, message_id)
        event = s.scalars(select(TrackingEvent)).one()
    assert event.kind == "click" and event.link_position == 2
    assert stat is not None and stat.click_count == 1 and stat.first_click_at is not None
    assert message is not None and message.click_count == 1


@pytest.mark.asyncio
async def test_non_ascii_destination_is_percent_encoded_in_location(app: MailbeaconApp) -> None:
    token = app.runtime.codec.mint_click_token(1, 0, "https://example.com/café?q=ü")
    async with client(app) as c:
        r = await c.get(f"/t/c/{token}")
    assert r.status_code == 302
    assert r.headers["location"] == "https://example.com/caf%C3%A9?q=%C3%BC"


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "destination",
    [
        "javascript:alert(1)",
        "data:text/html,hi",
        "ftp://example.com/",
        "https://",
        "//evil.com",
        "https://example.com/\r\nSet-Cookie: a=b",
        "file:///etc/passwd",
    ],
)
async def test_only_http_destinations_are_ever_redirected_to(
    app: MailbeaconApp, destination: str
) -> None:
    token = app.runtime.codec.mint_click_token(1, 0, destination)
    async with client(app) as c:
        r = await c.get(f"/t/c/{token}")
    assert r.status_code == 404 and "location" not in r.headers


@pytest.mark.asyncio
async def test_forged_altered_and_truncated_click_tokens_get_a_plain_404(
    app: MailbeaconApp, database: Database
) -> None:
    _, (copy_id,), _ = seed(database)
    token = app.runtime.codec.mint_click_token(copy_id, 0, "https://example.com/")
    flipped = token[:10] + ("B" if token[10] != "B" else "C") + token[11:]
    async with client(app) as c:
        for bad in (flipped, token[:-3], token + "x", "A" * 60, "..%2f..%2fetc", "%00"):
            r = await c.get(f"/t/c/{bad}")
            assert r.status_code == 404
            assert "location" not in r.headers
            assert "Link not found" in r.text and token not in r.text
        assert (await c.post(f"/t/c/{token}")).status_code == 405
    assert count_events(database) == 0


@pytest.mark.asyncio
async def test_the_senders_own_browser_is_labelled_self(
    app: MailbeaconApp, database: Database
) -> None:
    _, (copy_id,), user_id = seed(database)
    codec = app.runtime.codec
    async with client(app) as c:
        c.cookies.set(VIEWER_COOKIE, codec.mint_viewer_token(user_id))
        await c.get(f"/t/o/{codec.mint_open_token(copy_id)}.gif")
        c.cookies.set(VIEWER_COOKIE, codec.mint_viewer_token(user_id + 1000))
        await c.get(
            f"/t/o/{codec.mint_open_token(copy_id)}.gif",
            headers={"user-agent": "Thunderbird/128.0"},
        )
    with database.sessions() as s:
        labels = [e.label for e in s.scalars(select(TrackingEvent).order_by(TrackingEvent.id))]
        copy = s.get(RecipientCopy, copy_id)
    assert labels[0] == "self" and labels[1] != "self"
    assert copy is not None and copy.open_count == 1


@pytest.mark.asyncio
async def test_each_recipient_is_attributed_separately(
    app: MailbeaconApp, database: Database
) -> None:
    _, (a, b, c_id), _ = seed(database, ("a@x.org", "b@x.org", "c@x.org"))
    codec = app.runtime.codec
    async with client(app) as c:
        await c.get(f"/t/o/{codec.mint_open_token(b)}.gif")
        await c.get(f"/t/c/{codec.mint_click_token(c_id, 0, 'https://example.com/')}")
    with database.sessions() as s:
        copies = {cp.id: cp for cp in s.scalars(select(RecipientCopy))}
    assert (copies[a].open_count, copies[b].open_count, copies[c_id].open_count) == (0, 1, 0)
    assert (copies[a].click_count, copies[b].click_count, copies[c_id].click_count) == (0, 0, 1)


@pytest.mark.asyncio
async def test_concurrent_hits_share_commits_and_none_is_lost(
    app: MailbeaconApp, database: Database
) -> None:
    _, copy_ids, _ = seed(database, tuple(f"r{i}@x.org" for i in range(20)))
    codec = app.runtime.codec
    async with client(app) as c:
        responses = await asyncio.gather(
            *(c.get(f"/t/o/{codec.mint_open_token(copy_ids[i % 20])}.gif") for i in range(300))
        )
    assert all(r.status_code == 200 for r in responses)
    assert count_events(database) == 300
    assert app.ingest.stats["stored"] == 300
    writer = app.ingest.writer
    assert writer is not None and writer.stats["records"] == 300
    assert writer.stats["commits"] < 300  # group commit happened


@pytest.mark.asyncio
async def test_unknown_copy_hits_are_answered_but_not_stored(
    app: MailbeaconApp, database: Database
) -> None:
    token = app.runtime.codec.mint_open_token(987654)
    async with client(app) as c:
        r = await c.get(f"/t/o/{token}.gif")
    assert r.status_code == 200
    assert count_events(database) == 0


@pytest.mark.asyncio
async def test_a_destination_with_spaces_still_redirects(app: MailbeaconApp) -> None:
    token = app.runtime.codec.mint_click_token(1, 0, "https://example.com/files/Q3 report.pdf")
    async with client(app) as c:
        r = await c.get(f"/t/c/{token}")
    assert r.status_code == 302
    assert r.headers["location"] == "https://example.com/files/Q3%20report.pdf"


@pytest.mark.asyncio
async def test_the_viewer_cookie_is_found_by_its_exact_name_in_any_cookie_header(
    app: MailbeaconApp, database: Database
) -> None:
    _, (copy_id,), user_id = seed(database)
    codec = app.runtime.codec
    viewer = codec.mint_viewer_token(user_id)
    pixel = f"/t/o/{codec.mint_open_token(copy_id)}.gif"
    transport = httpx.ASGITransport(app=stored_before_answer(app), client=("203.0.113.9", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
        # A look-alike name is not our cookie.
        await c.get(
            pixel, headers={"cookie": f"xmb_viewer={viewer}", "user-agent": "Thunderbird/1"}
        )
        # Split over several headers (as HTTP/2 sends them), ours in the second.
        await c.get(
            pixel,
            headers=[
                ("cookie", "a=1; b=2"),
                ("cookie", f"theme=dark; mb_viewer={viewer}"),
                ("user-agent", "Thunderbird/2"),
            ],
        )
    with database.sessions() as s:
        labels = [e.label for e in s.scalars(select(TrackingEvent).order_by(TrackingEvent.id))]
    assert labels == ["human", "self"]


@pytest.mark.asyncio
async def test_too_fast_applies_to_real_mailboxes_but_not_to_the_demo_mailbox(
    settings: Settings, database: Database
) -> None:
    with database.unit_of_work() as s:
        user = make_user(s)
        demo = MailboxConnection(
            user_id=user.id,
            is_demo=True,
            sender_address=user.email,
            smtp_host="127.0.0.1",
            smtp_port=2525,
            smtp_security=Security.NONE,
        )
        s.add(demo)
        s.flush()
        _, (real_copy,) = make_message(s, user)
        demo_message, (demo_copy,) = make_message(s, user)
        demo_message.mailbox_connection_id = demo.id
        ids = (real_copy.id, demo_copy.id)
    strict = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"TOO_FAST_SECONDS": 60}))
    )
    await strict.ingest.start()
    try:
        async with client(strict) as c:
            for copy_id in ids:
                await c.get(f"/t/o/{strict.runtime.codec.mint_open_token(copy_id)}.gif")
    finally:
        await strict.ingest.stop()
        strict.runtime.database.dispose()
    with database.sessions() as s:
        labels = {e.copy_id: e.label for e in s.scalars(select(TrackingEvent))}
    assert labels == {ids[0]: "too_fast", ids[1]: "human"}


def test_uids_of_a_forked_child_are_its_own() -> None:
    """The random part comes in blocks: a child forked with part of a block left must not
    hand out the uids its parent hands out next (two edge workers, one journal each,
    same millisecond)."""
    new_uid(1.0)  # a block is in use and has more in it
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        os.close(read_end)
        os.write(write_end, "\n".join(new_uid(1.0) for _ in range(3000)).encode())
        os._exit(0)
    os.close(write_end)
    parent = {new_uid(1.0) for _ in range(3000)}  # past the end of the block, too
    with os.fdopen(read_end, "rb") as pipe:
        child = set(pipe.read().decode().split("\n"))
    os.waitpid(pid, 0)
    assert len(parent) == len(child) == 3000
    assert not parent & child
