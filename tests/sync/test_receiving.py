"""Incoming mail matched to what was sent and stored: replies, automatic replies, bounces.

The Receiver is the one path every incoming message takes (IMAP and the demo
mailbox); here it is fed RFC 5322 bytes directly, on both databases. The same
real samples go through IMAP end to end in test_sync_worker.py.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import message_service
from mailbeacon.models import (
    CopyStatus,
    Message,
    NotificationKind,
    ReceivedKind,
    RecipientCopy,
    User,
)
from mailbeacon.runtime import Runtime
from mailbeacon.sync import repository
from mailbeacon.sync.receiving import Arrival
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import send_mail
from tests.sync.harness import (
    copies,
    mark_sent,
    notifications,
    received,
    reply_bytes,
    sync_runtime,
    sync_settings,
)

__all__ = ["sync_runtime", "sync_settings"]

SAMPLES = Path(__file__).parent / "samples"


def seller(database: Database, email: str = "sally@example.com") -> int:
    with database.unit_of_work() as s:
        return make_smtp_sender(s, port=25, email=email, name="Sally Seller").id


def receive(database: Database, runtime: Runtime, user_id: int, *raws: bytes, ago: float = 0):
    at = utcnow() - timedelta(seconds=ago)
    with database.unit_of_work() as s:
        return runtime.receiver.receive(
            s, repository.owner(s, user_id), [Arrival(raw, at) for raw in raws]
        )


def header_of(database: Database, message_id: int) -> str:
    with database.sessions() as s:
        return s.get_one(Message, message_id).message_id_header


def test_a_reply_is_matched_by_in_reply_to_and_counted_on_the_copy_and_the_email(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org", "dan@example.org"))
    mid = header_of(database, sent.message_id)
    reply = reply_bytes(
        sender="Carla Buyer <Carla@Example.org>",
        to="sally@example.com",
        subject="Re: Our offer",
        in_reply_to=mid,
        text="Yes, please send the contract.",
        quoted="Hello,\nsee our new offer",
    )
    stored = receive(database, sync_runtime, user, reply)
    assert [(e.kind, e.copy_id) for e in stored] == [
        (ReceivedKind.REPLY, sent.copies["carla@example.org"])
    ]
    carla, dan = copies(database, sent.message_id).values()
    assert (carla.reply_count, dan.reply_count) == (1, 0)
    assert carla.replied_at is not None and dan.replied_at is None
    [row] = received(database, sent.message_id)
    assert row.new_text == "Yes, please send the contract."
    assert "> see our new offer" in row.full_text
    [note] = notifications(database, user)
    assert note.kind == NotificationKind.REPLY
    assert note.title == "Carla Buyer replied to “Our offer”"
    assert note.copy_id == sent.copies["carla@example.org"]


def test_a_reply_is_matched_by_references_alone(database: Database, sync_runtime: Runtime) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    mid = header_of(database, sent.message_id)
    # Some clients drop In-Reply-To and keep only References, ours among others.
    reply = reply_bytes(
        sender="carla@example.org",
        to="sally@example.com",
        subject="Re: Our offer",
        references=f"<older@example.org> {mid} <sibling@example.org>",
    )
    [event] = receive(database, sync_runtime, user, reply)
    assert event.message_id == sent.message_id
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 1


def test_a_reply_from_a_cc_recipient_lands_on_that_recipients_copy(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    with database.unit_of_work() as s:
        draft = Draft(
            to=["carla@example.org"], cc=["Erin <erin@example.org>"], subject="Pricing",
            body_text="Prices attached.",
        )  # fmt: skip
        message = message_service.plan_send(
            s, s.get_one(User, user), draft, instrumenter=sync_runtime.tracking
        )
        message_id, mid = message.id, message.message_id_header
    mark_sent(database, message_id)
    reply = reply_bytes(
        sender="Erin <erin@example.org>", to="sally@example.com", subject="Re: Pricing",
        in_reply_to=mid,
    )  # fmt: skip
    [event] = receive(database, sync_runtime, user, reply)
    found = copies(database, message_id)
    assert event.copy_id == found["erin@example.org"].id
    assert (found["erin@example.org"].reply_count, found["carla@example.org"].reply_count) == (1, 0)


def test_a_reply_from_someone_the_email_was_forwarded_to_stays_on_the_email(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    mid = header_of(database, sent.message_id)
    reply = reply_bytes(
        sender="Frank Forwarded <frank@elsewhere.example>",
        to="sally@example.com",
        subject="Re: Fwd: Our offer",
        in_reply_to="<forward-of-carla@example.org>",
        references=f"{mid} <forward-of-carla@example.org>",
    )
    [event] = receive(database, sync_runtime, user, reply)
    assert event.copy_id is None and event.message_id == sent.message_id
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 0
    with database.sessions() as s:
        assert s.get_one(Message, sent.message_id).reply_count == 1
    [note] = notifications(database, user)
    assert note.copy_id is None and note.title == "Frank Forwarded replied to “Our offer”"


def test_a_reply_without_threading_headers_matches_by_sender_and_subject_only(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",), subject="Pricing")
    other_subject = reply_bytes(
        sender="carla@example.org", to="sally@example.com", subject="Re: Lunch?"
    )
    same_subject = reply_bytes(
        sender="carla@example.org", to="sally@example.com", subject="RE: AW: Pricing"
    )
    stranger = reply_bytes(sender="zed@example.org", to="sally@example.com", subject="Re: Pricing")
    stored = receive(database, sync_runtime, user, other_subject, same_subject, stranger)
    assert [(e.message_id, e.copy_id) for e in stored] == [
        (sent.message_id, sent.copies["carla@example.org"])
    ]


def test_the_users_own_mail_and_unrelated_mail_are_not_stored(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    mid = header_of(database, sent.message_id)
    own = reply_bytes(sender="Sally <SALLY@example.com>", to="carla@example.org",
                      subject="Re: Our offer", in_reply_to=mid)  # fmt: skip
    newsletter = reply_bytes(sender="news@shop.example", to="sally@example.com", subject="Deals")
    unrelated = reply_bytes(sender="carla@example.org", to="sally@example.com",
                            subject="Re: something else", in_reply_to="<x@y.example>")  # fmt: skip
    assert receive(database, sync_runtime, user, own, newsletter, unrelated) == []
    assert received(database) == []
    assert notifications(database, user) == []


def test_mail_read_twice_is_stored_once(database: Database, sync_runtime: Runtime) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("carla@example.org",))
    reply = reply_bytes(sender="carla@example.org", to="sally@example.com", subject="Re: Our offer",
                        in_reply_to=header_of(database, sent.message_id))  # fmt: skip
    assert len(receive(database, sync_runtime, user, reply)) == 1
    assert receive(database, sync_runtime, user, reply) == []
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 1
    assert len(received(database)) == 1 and len(notifications(database, user)) == 1


def test_replies_notify_only_users_who_want_it_and_only_when_recent(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    quiet = seller(database, "quinn@example.com")
    with database.unit_of_work() as s:
        s.execute(update(User).where(User.id == quiet).values(notify_tracking=False))
    mine = send_mail(database, sync_runtime, user, ("carla@example.org",))
    theirs = send_mail(database, sync_runtime, quiet, ("carla@example.org",))
    for owner, sent in ((user, mine), (quiet, theirs)):
        reply = reply_bytes(sender="carla@example.org", to="x@example.com", subject="Re: Our offer",
                            in_reply_to=header_of(database, sent.message_id))  # fmt: skip
        receive(database, sync_runtime, owner, reply)
    # An old reply found by a first sync is recorded without ringing the bell.
    old = reply_bytes(sender="carla@example.org", to="x@example.com", subject="Re: Our offer",
                      in_reply_to=header_of(database, mine.message_id))  # fmt: skip
    receive(database, sync_runtime, user, old, ago=3 * 24 * 3600)
    assert len(notifications(database, user)) == 1
    assert notifications(database, quiet) == []
    assert copies(database, theirs.message_id)["carla@example.org"].reply_count == 1
    assert copies(database, mine.message_id)["carla@example.org"].reply_count == 2


AUTO_REPLIES = {
    # sample: (the address our email went to, its subject, matched by)
    "exchange-oof.eml": ("nekonyaan@example.org", "Nyaan", "sender and subject"),
    "exchange-oof-2.eml": ("kijitora@example.org", "Nyaan", "sender and subject"),
    "icloud-vacation.eml": ("kijitora@apple.example.com", "Nyaan", "message-id"),
    "rfc3834-away.eml": ("kijitora@example.net", "Hello", "sender"),
    "wp-pl-autoreply.eml": ("example10@wp.pl", "test", "sender and subject"),
    "oneandone-autoreply.eml": ("john@a.b.c", "Newsletter", "sender"),
}


@pytest.mark.parametrize("sample", sorted(AUTO_REPLIES))
def test_real_automatic_replies_are_recorded_never_counted_nor_notified(
    database: Database, sync_runtime: Runtime, sample: str
) -> None:
    address, subject, how = AUTO_REPLIES[sample]
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, (address,), subject=subject)
    if how == "message-id":
        mark_sent(
            database, sent.message_id, "<25203A4E-F90F-4A14-BF51-3E7B9D39BE8E@libsisimai.org>"
        )
    [event] = receive(database, sync_runtime, user, (SAMPLES / "auto_reply" / sample).read_bytes())
    assert event.kind == ReceivedKind.AUTO_REPLY
    [row] = received(database)
    assert row.reason.endswith(f"matched by {how}")
    copy = copies(database, sent.message_id)[address]
    assert copy.auto_replied_at is not None
    assert (copy.reply_count, copy.replied_at) == (0, None)
    assert notifications(database, user) == []


def test_an_autoresponder_answering_from_another_address_without_threading_is_not_guessed(
    database: Database, sync_runtime: Runtime
) -> None:
    # Mimecast answers from noreply@ with no In-Reply-To: nothing ties it to an email.
    user = seller(database)
    send_mail(database, sync_runtime, user, ("nekochan@ef.example.org",), subject="Nyaan")
    raw = (SAMPLES / "auto_reply" / "mimecast-autoresponder.eml").read_bytes()
    assert receive(database, sync_runtime, user, raw) == []


BOUNCES = {
    # sample: (failed address, the returned Message-ID or None, status code)
    "postfix.eml": ("kijitora@example.org", None, "5.1.1"),
    "exim.eml": ("kijitora@example.ed.jp", "<E1P1ce6-000Egt-GZ@e1.example.org>", "5.7.0"),
    "qmail.eml": (
        "kijitora@example.ne.jp",
        "<000000000.9999999999999.JavaMail.postmaster@mailhub>",
        "5.5.0",
    ),
    "sendmail.eml": (
        "userunknown@bouncehammer.jp",
        "<E1C50F1B-1C83-4820-BC36-AC6FBFBE8568@example.org>",
        "5.1.1",
    ),
    "gmail-legacy.eml": (
        "userunknown@example.jp",
        "<D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com>",
        "5.1.1",
    ),
    "google-workspace.eml": (
        "neko-nyaan-cat-meeting@google-groups.example.com",
        "<CAByYQsF5qdTf_h-1AAVPW0RgR1YN+LE=+0Uv9LpQ4aA_myPtCw@mail.gmail.com>",
        "",
    ),
    "office365.eml": (
        "kijitora@example.com",
        "<000000000000.2222.22222222222200000000@NEKO-NYAAN>",
        "5.1.0",
    ),
    "exchange2007.eml": ("mikeneko@example.co.jp", None, "5.1.1"),
    "outlook-com.eml": (
        "kijitora@example.jp",
        "<BLU436-SMTP6645ECA6E7FEFFE86D040BBA770@phx.gbl>",
        "5.2.2",
    ),
    "yahoo.eml": (
        "kijitora@example.org",
        "<6AE6249A-E7A8-4980-862C-F499F6B8E7C5@y.example.co.jp>",
        "5.1.1",
    ),
}


@pytest.mark.parametrize("sample", sorted(BOUNCES))
def test_real_bounces_mark_the_copy_bounced_with_code_and_diagnostic(
    database: Database, sync_runtime: Runtime, sample: str
) -> None:
    address, returned, code = BOUNCES[sample]
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, (address, "other@example.com"))
    if returned is not None:
        mark_sent(database, sent.message_id, returned)
    [event] = receive(database, sync_runtime, user, (SAMPLES / "bounce" / sample).read_bytes())
    assert event.kind == ReceivedKind.BOUNCE and event.copy_id == sent.copies[address]
    found = copies(database, sent.message_id)
    assert found[address].status == CopyStatus.BOUNCED
    assert found[address].bounce_status == code
    assert found[address].bounce_diagnostic
    assert found["other@example.com"].status == CopyStatus.SENT
    assert notifications(database, user) == []


def test_a_bounce_never_turns_a_failed_copy_into_a_bounced_one(
    database: Database, sync_runtime: Runtime
) -> None:
    user = seller(database)
    sent = send_mail(database, sync_runtime, user, ("kijitora@example.org",))
    with database.unit_of_work() as s:
        s.execute(update(RecipientCopy).values(status=CopyStatus.FAILED))
    receive(database, sync_runtime, user, (SAMPLES / "bounce" / "postfix.eml").read_bytes())
    assert copies(database, sent.message_id)["kijitora@example.org"].status == CopyStatus.FAILED


def test_mail_is_only_ever_matched_to_the_mailbox_owners_email(
    database: Database, sync_runtime: Runtime
) -> None:
    sally = seller(database)
    olga = seller(database, "olga@example.com")
    sent = send_mail(database, sync_runtime, olga, ("carla@example.org",), subject="Pricing")
    reply = reply_bytes(sender="carla@example.org", to="olga@example.com", subject="Re: Pricing",
                        in_reply_to=header_of(database, sent.message_id))  # fmt: skip
    # Found in Sally's mailbox (a Cc, say): Olga's email is not Sally's to learn about.
    assert receive(database, sync_runtime, sally, reply) == []
    assert copies(database, sent.message_id)["carla@example.org"].reply_count == 0
