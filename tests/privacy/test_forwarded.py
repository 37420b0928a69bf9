"""Possibly forwarded opens: a human open from a network and an agent unlike every earlier
human open of the copy is marked, shown and counted apart."""

from __future__ import annotations

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.models import Message, RecipientCopy, TrackingEvent, User
from mailbeacon.tracking.hits import USER_AGENT_BYTES
from tests.factories.hits import CHROME, GMAIL_PROXY, THUNDERBIRD, hit, record
from tests.factories.privacy import copies_of, set_policy

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello, see <a href="https://example.com/offer">our offer</a>.</p>'
ANN = "ann@example.org"
HOME, OFFICE, ELSEWHERE = "203.0.113.0/24", "192.0.2.0/24", "198.51.100.0/24"
IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)


async def ann_copy(
    app: MailbeaconApp, admin: httpx.AsyncClient, **policy: object
) -> tuple[int, int]:
    with app.runtime.database.sessions() as s:
        user_id = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert user_id is not None
    set_policy(app.runtime.database, user_id, consent_required=False, **policy)
    r = await admin.post("/api/messages", json={"to": [ANN], "subject": "Hi", "body_html": BODY})
    message_id = int(r.json()["id"])
    return message_id, copies_of(app.runtime.database, message_id)[ANN].id


async def test_an_open_unlike_the_earlier_ones_is_marked_and_counted_apart(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    message_id, copy_id = await ann_copy(app, admin)
    minute = 60.0
    first = hit(copy_id, ua=CHROME, ip_prefix=HOME)
    t0 = first.occurred_at
    record(app.runtime, first)
    # The same person: another device at home, then the same browser at the office.
    record(app.runtime, hit(copy_id, ua=IPHONE, ip_prefix=HOME, at=t0 + 1 * minute))
    record(app.runtime, hit(copy_id, ua=CHROME, ip_prefix=OFFICE, at=t0 + 2 * minute))
    # Someone else: another network and another agent than any of hers.
    forwarded = hit(copy_id, ua=THUNDERBIRD, ip_prefix=ELSEWHERE, at=t0 + 3 * minute)
    # An image proxy fetch is not a human open: never marked.
    proxy = hit(copy_id, ua=GMAIL_PROXY, ip_prefix="66.249.84.0/24", at=t0 + 4 * minute)
    record(app.runtime, forwarded, proxy)

    db = app.runtime.database
    with db.sessions() as s:
        marked = {e.uid: e.possibly_forwarded for e in s.scalars(select(TrackingEvent))}
        copy = s.get(RecipientCopy, copy_id)
        message = s.get(Message, message_id)
        assert copy is not None and message is not None
        assert (copy.open_count, copy.forwarded_open_count) == (5, 1)
        assert (message.open_count, message.forwarded_open_count) == (5, 1)
    assert [uid for uid, flag in marked.items() if flag] == [forwarded.uid]
    detail = (await admin.get(f"/api/mail/{message_id}")).json()
    assert detail["forwarded_open_count"] == 1
    flagged = [e for e in detail["timeline"] if e["possibly_forwarded"]]
    assert len(flagged) == 1 and flagged[0]["judged"] == "opened"
    page = (await admin.get(f"/mail/{message_id}")).text
    assert "1 of them possibly forwarded" in page
    # Marked in the open icon's list and on the timeline, for that one open only.
    assert page.count('class="mb-forwarded"') == 2


async def test_without_network_prefixes_nothing_is_marked(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    _, copy_id = await ann_copy(app, admin, store_network=False)
    first = hit(copy_id, ua=CHROME, ip_prefix=HOME)
    record(app.runtime, first)
    record(
        app.runtime, hit(copy_id, ua=THUNDERBIRD, ip_prefix=ELSEWHERE, at=first.occurred_at + 60)
    )
    with app.runtime.database.sessions() as s:
        assert not any(s.scalars(select(TrackingEvent.possibly_forwarded)))


async def test_opens_in_one_batch_compare_with_each_other_and_marked_ones_never_count(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    """Each open is judged against the copy's earlier opens in time, stored before or in
    the same batch; a marked open is no reference for later ones; an open replayed late,
    older than everything stored, has no earlier open and is not marked."""
    _, copy_id = await ann_copy(app, admin)
    t0 = hit(copy_id).occurred_at
    minute = 60.0
    own = hit(copy_id, ua=CHROME, ip_prefix=HOME, at=t0)
    stranger = hit(copy_id, ua=THUNDERBIRD, ip_prefix=ELSEWHERE, at=t0 + minute)
    # From the stranger's source again: the stranger's open was marked, so nothing
    # earlier and unmarked is like it: marked too.
    stranger_again = hit(copy_id, ua=THUNDERBIRD, ip_prefix=ELSEWHERE, at=t0 + 2 * minute)
    # Her phone at the office: a network and an agent not seen yet, so marked; then her
    # own browser at the office: an agent seen before, not marked.
    phone = hit(copy_id, ua=IPHONE, ip_prefix=OFFICE, at=t0 + 3 * minute)
    office = hit(copy_id, ua=CHROME, ip_prefix=OFFICE, at=t0 + 4 * minute)
    # Out of order in the batch: the pipeline judges in time order.
    record(app.runtime, office, stranger_again, own, phone, stranger)
    # A later batch: the phone's open was marked, the office one was not, so the
    # phone at the office now matches the office network.
    phone_again = hit(copy_id, ua=IPHONE, ip_prefix=OFFICE, at=t0 + 5 * minute)
    # Replayed late: before every stored open of the copy, so none is earlier.
    early = hit(copy_id, ua=THUNDERBIRD, ip_prefix="192.0.2.128/25", at=t0 - 10 * minute)
    record(app.runtime, phone_again, early)
    with app.runtime.database.sessions() as s:
        marked = {
            uid
            for uid, flag in s.execute(select(TrackingEvent.uid, TrackingEvent.possibly_forwarded))
            if flag
        }
        copy = s.get(RecipientCopy, copy_id)
        assert copy is not None
        assert copy.forwarded_open_count == 3
    assert marked == {stranger.uid, stranger_again.uid, phone.uid}


async def test_a_very_long_agent_is_stored_cut_and_still_compared(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    # Not from the edge (which reads a header's bytes, two UTF-8 bytes a character at
    # most): four bytes a character, hardly alike. Whole, on PostgreSQL, it would neither
    # compress nor fit in an entry of the sources' index; nor would its first thousand.
    agent = "".join(chr(0x1F300 + (i * 37) % 700) for i in range(3000))
    _, copy_id = await ann_copy(app, admin)
    first = hit(copy_id, ua=agent, ip_prefix=HOME)
    record(app.runtime, first)
    # The same agent again from elsewhere: compared with the stored (cut) one, not marked.
    again = hit(copy_id, ua=agent, ip_prefix=OFFICE, at=first.occurred_at + 60)
    record(app.runtime, again)
    with app.runtime.database.sessions() as s:
        stored = {e.uid: e for e in s.scalars(select(TrackingEvent))}
    assert set(stored) == {first.uid, again.uid}
    kept = stored[first.uid].user_agent
    assert agent.startswith(kept) and len(kept.encode()) == USER_AGENT_BYTES
    assert not stored[again.uid].possibly_forwarded
