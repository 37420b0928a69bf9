"""Planning a send: validation, recipients, contacts, tracking decisions, switch defaults."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, selectinload

from mailbeacon.db import Database
from mailbeacon.mail import repository
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import (
    MAX_BODY_BYTES,
    CannotRetry,
    CopyNotFound,
    InvalidDraft,
    NoMailbox,
    message_service,
)
from mailbeacon.models import (
    Contact,
    CopyStatus,
    MessageLink,
    OutboxEntry,
    RecipientCopy,
    TrackingDecision,
    User,
)
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender, make_user
from tests.factories.mail import OFFER_HTML, plan


def copies_of(database: Database, message_id: int) -> list[RecipientCopy]:
    with database.sessions() as s:
        return list(
            s.scalars(
                select(RecipientCopy)
                .where(RecipientCopy.message_id == message_id)
                .order_by(RecipientCopy.id)
                # Read after the session: the bodies (a table of their own) with them.
                .options(selectinload(RecipientCopy.body))
            )
        )


def test_plan_writes_message_copies_links_contacts_and_outbox(
    database: Database, runtime: Runtime
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        message = plan(
            s,
            runtime,
            user,
            to=["Ann <ann@example.org>, bob@example.org"],
            cc=["carl@example.org", "ANN@example.org"],  # Ann again: To wins
            bcc=["dora@example.org", "bob@example.org"],  # Bob again: To wins
        )
        message_id = message.id
        assert message.to_header == "Ann <ann@example.org>, bob@example.org"
        assert message.cc_header == "carl@example.org"
        assert message.sender_address == "sally@example.com"
        assert message.sender_name == "Sally Seller"
        assert message.message_id_header.endswith("@example.com>")
        assert message.sent_at is None
        # The text alternative was generated from the HTML, links kept.
        assert message.body_text is not None
        assert "new offer (https://example.com/offer?x=1&y=2)" in message.body_text
    copies = copies_of(database, message_id)
    assert [(c.address, c.kind) for c in copies] == [
        ("ann@example.org", "to"),
        ("bob@example.org", "to"),
        ("carl@example.org", "cc"),
        ("dora@example.org", "bcc"),
    ]
    assert {c.status for c in copies} == {CopyStatus.QUEUED}
    assert {c.decision for c in copies} == {TrackingDecision.TRACKED}
    assert all(c.open_tracked and c.links_tracked for c in copies)
    # Each copy's bodies are its own: both parts carry that copy's tokens.
    for c in copies:
        assert c.html_body is not None and c.text_body is not None
        assert "/t/o/" in c.html_body and "/t/c/" in c.html_body and "/t/c/" in c.text_body
        assert "https://example.com/offer" not in c.text_body
    assert len({c.html_body for c in copies}) == 4
    with database.sessions() as s:
        links = s.scalars(select(MessageLink).where(MessageLink.message_id == message_id)).all()
        assert sorted(link.url for link in links) == [
            "https://example.com/offer?x=1&y=2",
            "https://example.com/pricing",
        ]
        contacts = s.scalars(select(Contact).order_by(Contact.email)).all()
        assert [(c.email, c.name) for c in contacts] == [
            ("ann@example.org", "Ann"),
            ("bob@example.org", ""),
            ("carl@example.org", ""),
            ("dora@example.org", ""),
        ]
        assert {c.contact_id for c in copies} == {c.id for c in contacts}
        entry = s.scalars(select(OutboxEntry)).one()
        assert (entry.message_id, entry.completed_at) == (message_id, None)


def test_contacts_are_created_once_and_reused(database: Database, runtime: Runtime) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        plan(s, runtime, user, to=["Ann <ann@example.org>"])
        plan(s, runtime, user, to=["Other Name <ANN@example.org>"])
    with database.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Contact)) == 1
        assert s.scalars(select(Contact.name)).one() == "Ann"


def test_invalid_draft_reports_every_field_and_writes_nothing(
    database: Database, runtime: Runtime
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
    with database.sessions() as s:
        user = s.get_one(User, user.id)
        with pytest.raises(InvalidDraft) as caught:
            plan(
                s,
                runtime,
                user,
                to=["ann@example.org, bob@"],
                cc=["x"],
                bcc=["dora@example.org"],
                subject="x" * 999,
            )
        errors = caught.value.errors
        # One sentence each, at its field: the field is not named again.
        assert errors["to"] == [
            "“bob@” is not a valid address: there must be something after the @-sign."
        ]
        assert errors["cc"] == ["“x” is not a valid address: an email address must have an @-sign."]
        assert "bcc" not in errors
        assert errors["subject"] == ["At most 998 characters."]
        with pytest.raises(InvalidDraft) as caught:
            plan(s, runtime, user, to=[" ", ""], cc=[], bcc=[])
        assert caught.value.errors == {"to": ["Add at least one recipient."]}
        s.rollback()
    with database.sessions() as s:
        assert s.scalar(select(func.count()).select_from(RecipientCopy)) == 0


def test_no_mailbox_is_a_domain_error(database: Database, runtime: Runtime) -> None:
    with database.sessions() as s:
        user = make_user(s)
        with pytest.raises(NoMailbox):
            plan(s, runtime, user)


def test_switches_default_from_the_last_send(database: Database, runtime: Runtime) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        draft = message_service.new_draft(user)
        assert (draft.open_tracking, draft.link_tracking) == (True, True)
        message = plan(s, runtime, user, open_tracking=False, link_tracking=True)
        assert (user.last_open_tracking, user.last_link_tracking) == (False, True)
        draft = message_service.new_draft(user)
        assert (draft.open_tracking, draft.link_tracking) == (False, True)
        message_id, user_id = message.id, user.id
    (copy,) = copies_of(database, message_id)
    assert copy.decision == TrackingDecision.TRACKED
    assert not copy.open_tracked and copy.links_tracked
    assert copy.html_body is not None and "/t/o/" not in copy.html_body
    with database.unit_of_work() as s:
        user = s.get_one(User, user_id)
        message = plan(s, runtime, user, open_tracking=False, link_tracking=False)
        message_id = message.id
        draft = message_service.new_draft(user)
        assert (draft.open_tracking, draft.link_tracking) == (False, False)
    (copy,) = copies_of(database, message_id)
    assert copy.decision == TrackingDecision.DISABLED_BY_USER
    assert copy.decision_reason == "Tracking was switched off for this email."
    assert copy.html_body == OFFER_HTML


def test_tracking_turned_off_in_settings_forces_the_switches(
    database: Database, runtime: Runtime
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        user.open_tracking_enabled = False
        user.link_tracking_enabled = False
        assert message_service.new_draft(user).open_tracking is False
        message = plan(s, runtime, user, open_tracking=True, link_tracking=True)
        message_id = message.id
        assert (message.open_tracking, message.link_tracking) == (False, False)
        # What the user chose is still remembered as the switches.
        assert (user.last_open_tracking, user.last_link_tracking) == (True, True)
    (copy,) = copies_of(database, message_id)
    assert copy.decision == TrackingDecision.DISABLED_BY_USER
    assert copy.decision_reason == "Open and link tracking are turned off in your settings."
    assert not copy.open_tracked and not copy.links_tracked

    with database.unit_of_work() as s:
        user = s.get_one(User, copy.message_id and user.id)
        user.link_tracking_enabled = True
        message_id = plan(s, runtime, user).id
    (copy,) = copies_of(database, message_id)
    assert copy.decision == TrackingDecision.TRACKED
    assert copy.decision_reason == "Tracked. Open tracking is turned off in your settings."
    assert not copy.open_tracked and copy.links_tracked


def test_plain_text_and_empty_bodies_get_their_decisions(
    database: Database, runtime: Runtime
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        text_id = plan(s, runtime, user, body_html=None, body_text="See https://example.com/a").id
        empty_id = plan(s, runtime, user, body_html="<p> </p>").id
    (text_copy,) = copies_of(database, text_id)
    assert text_copy.decision == TrackingDecision.PLAIN_TEXT
    assert text_copy.html_body is None
    assert text_copy.text_body is not None and "/t/c/" in text_copy.text_body
    (empty_copy,) = copies_of(database, empty_id)
    assert empty_copy.decision == TrackingDecision.EMPTY_BODY


def test_copies_to_the_senders_own_addresses_go_out_untracked(
    database: Database, runtime: Runtime
) -> None:
    """The Untracked word of the planner wins over the switches and the settings note."""
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525, email="sally@example.com")
        user.open_tracking_enabled = False  # a settings note would follow "Tracked."
        message_id = plan(s, runtime, user, to=["ann@example.org"], cc=["Sally@Example.com"]).id
    ann, own = copies_of(database, message_id)
    assert ann.decision == TrackingDecision.TRACKED
    assert own.decision == TrackingDecision.OWN_ADDRESS
    assert own.decision_reason == (
        "Sent to your own address: not tracked, so your own reading never counts as an open."
    )
    assert (own.open_tracked, own.links_tracked) == (False, False)
    assert own.html_body == OFFER_HTML
    assert own.text_body is not None and "/t/" not in own.text_body


def test_a_body_of_exactly_the_limit_is_planned_and_one_octet_more_is_not(
    database: Database, runtime: Runtime
) -> None:
    limit = "é" * (MAX_BODY_BYTES // 2)  # 5,000,000 octets of UTF-8 in 2,500,000 characters
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        with pytest.raises(InvalidDraft) as caught:
            plan(s, runtime, user, body_html=None, body_text=limit + "x")
        assert caught.value.errors == {
            "body_text": ["The message is too large (5.1 MB); it can be up to 5 MB."]
        }
        # The limit is the message's: the HTML and the text given together.
        with pytest.raises(InvalidDraft) as caught:
            plan(s, runtime, user, body_html="a" * 3_000_000, body_text="b" * 2_000_001)
        assert set(caught.value.errors) == {"body_html", "body_text"}
        plan(s, runtime, user, body_html=None, body_text=limit)


def test_only_an_unknown_copy_of_ones_own_can_be_resent(
    database: Database, runtime: Runtime
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        other = make_smtp_sender(s, port=2525, email="otto@example.com")
        message = plan(s, runtime, user)
        copy = s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message.id)).one()
        copy_id = copy.id
        with pytest.raises(CannotRetry):
            message_service.retry_unknown(s, user, copy_id)
        copy.status = CopyStatus.UNKNOWN
        copy.attempts = 1
        s.flush()
        with pytest.raises(CopyNotFound):
            message_service.retry_unknown(s, other, copy_id)
        entry = s.scalars(select(OutboxEntry)).one()
        entry.completed_at = message.created_at
        message_service.retry_unknown(s, user, copy_id)
    with database.sessions() as s:
        copy = s.get_one(RecipientCopy, copy_id)
        assert (copy.status, copy.attempts) == (CopyStatus.QUEUED, 0)
        assert s.scalars(select(OutboxEntry.completed_at)).one() is None


def test_a_late_settle_wins_over_the_users_retry(
    database: Database, runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=2525)
        copy = s.scalars(
            select(RecipientCopy).where(RecipientCopy.message_id == plan(s, runtime, user).id)
        ).one()
        copy.status = CopyStatus.UNKNOWN
        copy_id = copy.id
    real_copy_of_user = repository.copy_of_user

    def copy_then_late_settle(session: Session, user_id: int, copy_id: int) -> RecipientCopy | None:
        found = real_copy_of_user(session, user_id, copy_id)
        # Right after the copy was read as unknown, the worker learns that the server
        # had it after all (textual SQL: the session's object is not told).
        session.execute(text(f"UPDATE recipient_copies SET status = 'sent' WHERE id = {copy_id}"))
        return found

    monkeypatch.setattr(repository, "copy_of_user", copy_then_late_settle)
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        with pytest.raises(CannotRetry):
            message_service.retry_unknown(s, user, copy_id)
    with database.sessions() as s:
        assert s.get_one(RecipientCopy, copy_id).status == CopyStatus.SENT


def test_draft_accepts_the_documented_shape() -> None:
    draft = Draft(to=["a@example.org"], subject="s", body_text="t")
    assert draft.cc == [] and draft.body_html is None and draft.open_tracking is True
