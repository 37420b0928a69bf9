"""Sending rules: validating a draft and planning its send in one transaction.

Planning writes everything the outbox worker needs (the message with its
visible headers, one copy per recipient with its tracking decision and tracked
bodies, the links, an outbox entry) and sends nothing: the email leaves only
after the caller commits, when the worker picks the entry up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.addresses import Address, parse_address_list
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.errors import Conflict, InvalidInput, NotFound
from mailbeacon.mail import repository
from mailbeacon.mail.events import SendQueued
from mailbeacon.mail.mime import html_to_text, new_message_id
from mailbeacon.mail.ports import Instrumenter
from mailbeacon.mail.schemas import Draft
from mailbeacon.models import (
    CopyStatus,
    Message,
    OutboxEntry,
    RecipientCopy,
    RecipientKind,
    TrackingDecision,
    User,
)

MAX_RECIPIENTS = 1000
MAX_SUBJECT_CHARS = 998  # RFC 5322 section 2.1.1 line limit; also the column's size
MAX_BODY_CHARS = 5_000_000


class InvalidDraft(InvalidInput):
    """The draft cannot be sent; ``errors`` maps each field to what is wrong with it."""

    summary = "invalid draft"


class NoMailbox(Conflict):
    """The user has no mailbox connection to send through."""


class CopyNotFound(NotFound):
    """No such copy among the user's messages."""


class CannotRetry(Conflict):
    """Only a copy whose delivery is unknown can be resent on the user's say."""


@dataclass(frozen=True, slots=True)
class ComposeSwitches:
    """Which tracking switches compose offers, and where they start."""

    offer_open: bool
    offer_link: bool
    open_tracking: bool
    link_tracking: bool


@dataclass(frozen=True, slots=True)
class Recipient:
    address: Address
    kind: RecipientKind


class MessageService:
    def compose_switches(self, user: User) -> ComposeSwitches:
        """What compose offers (Settings allow it) and where the switches start (the last send)."""
        return ComposeSwitches(
            offer_open=user.open_tracking_enabled,
            offer_link=user.link_tracking_enabled,
            open_tracking=user.compose_open_tracking,
            link_tracking=user.compose_link_tracking,
        )

    def resolve_switches(
        self, user: User, open_tracking: bool | None, link_tracking: bool | None
    ) -> tuple[bool, bool]:
        """The switches of one send: None means "as last time"; an option off is an error."""
        defaults = self.compose_switches(user)
        errors: dict[str, list[str]] = {}
        if open_tracking and not defaults.offer_open:
            errors["open_tracking"] = ["Open tracking is switched off in Settings > Email sync."]
        if link_tracking and not defaults.offer_link:
            errors["link_tracking"] = ["Link tracking is switched off in Settings > Email sync."]
        if errors:
            raise InvalidDraft(errors)
        return (
            defaults.open_tracking if open_tracking is None else open_tracking,
            defaults.link_tracking if link_tracking is None else link_tracking,
        )

    def new_draft(self, user: User) -> Draft:
        """An empty draft whose switches start from the user's last send (and settings)."""
        return Draft(
            open_tracking=user.last_open_tracking and user.open_tracking_enabled,
            link_tracking=user.last_link_tracking and user.link_tracking_enabled,
        )

    def recipients(self, draft: Draft) -> list[Recipient]:
        """The draft's recipients, validated and without repeats (To wins over Cc over Bcc)."""
        errors: dict[str, list[str]] = {}
        seen: set[str] = set()
        result: list[Recipient] = []
        for field_name, entries, kind in (
            ("to", draft.to, RecipientKind.TO),
            ("cc", draft.cc, RecipientKind.CC),
            ("bcc", draft.bcc, RecipientKind.BCC),
        ):
            parsed = parse_address_list(entries, field_name)
            if parsed.errors:
                errors[field_name] = parsed.errors
            for address in parsed.addresses:
                if address.key not in seen:
                    seen.add(address.key)
                    result.append(Recipient(address, kind))
        if not errors and not result:
            errors["to"] = ["to: add at least one recipient"]
        elif len(result) > MAX_RECIPIENTS:
            errors["to"] = [
                f"to: at most {MAX_RECIPIENTS} recipients per email (this one has {len(result)})"
            ]
        if errors:
            raise InvalidDraft(errors)
        return result

    def plan_send(
        self, session: Session, user: User, draft: Draft, *, instrumenter: Instrumenter
    ) -> Message:
        """Plan the send in the caller's unit of work; nothing leaves before it commits,
        and then the outbox worker is woken (``SendQueued``).

        Raises :class:`InvalidDraft` or :class:`NoMailbox` before writing anything.
        """
        recipients, subject, html, text = self._checked(draft)
        mailbox = repository.mailbox_for_user(session, user.id)
        if mailbox is None:
            raise NoMailbox(
                "No mailbox is connected: connect one in Settings > Email sync "
                "(or use the demo mailbox)."
            )

        if html is not None and text is None:
            # The plain-text alternative keeps each link as "text (url)", so its
            # links are tracked too when the copies are instrumented.
            text = html_to_text(html)
        now = utcnow()
        open_on = draft.open_tracking and user.open_tracking_enabled
        links_on = draft.link_tracking and user.link_tracking_enabled
        to = [r.address.formatted() for r in recipients if r.kind == RecipientKind.TO]
        cc = [r.address.formatted() for r in recipients if r.kind == RecipientKind.CC]
        message = Message(
            user_id=user.id,
            subject=subject,
            body_html=html,
            body_text=text if text is not None else "",  # no body at all: an empty text part
            open_tracking=open_on,
            link_tracking=links_on,
            created_at=now,
            sender_name=mailbox.sender_name,
            sender_address=mailbox.sender_address,
            to_header=", ".join(to),
            cc_header=", ".join(cc),
            message_id_header=new_message_id(mailbox.sender_address),
            mailbox_connection_id=mailbox.id,
        )
        session.add(message)
        session.flush()

        contacts = repository.ensure_contacts(
            session, user.organisation_id, [r.address for r in recipients]
        )
        copies = [
            RecipientCopy(
                message_id=message.id,
                address=r.address.email,
                kind=r.kind,
                contact_id=contacts.get(r.address.key),
                status=CopyStatus.QUEUED,
                next_attempt_at=now,  # due at once; the queue is served in due order
                decision=TrackingDecision.TRACKED,  # settled by instrument_copy below
            )
            for r in recipients
        ]
        session.add_all(copies)
        session.flush()
        instrumenter.record_links(session, message)
        for copy in copies:
            instrumenter.instrument_copy(session, message, copy)
            _explain_settings(copy, user, draft, message)
        session.add(OutboxEntry(message_id=message.id, created_at=now))
        # The switches as the user set them become the next draft's defaults.
        user.last_open_tracking = draft.open_tracking
        user.last_link_tracking = draft.link_tracking
        session.flush()
        after_commit(session, SendQueued(message.id))
        return message

    def _checked(self, draft: Draft) -> tuple[list[Recipient], str, str | None, str | None]:
        """The draft's recipients, subject and bodies, or InvalidDraft with every problem."""
        errors: dict[str, list[str]] = {}
        try:
            recipients = self.recipients(draft)
        except InvalidDraft as exc:
            errors = exc.errors
            recipients = []
        subject = re.sub(r"[\r\n]+", " ", draft.subject).strip()
        if len(subject) > MAX_SUBJECT_CHARS:
            errors["subject"] = [f"subject: at most {MAX_SUBJECT_CHARS} characters"]
        html = draft.body_html if draft.body_html and draft.body_html.strip() else None
        text = draft.body_text if draft.body_text and draft.body_text.strip() else None
        for name, body in (("body_html", html), ("body_text", text)):
            if body is not None and len(body) > MAX_BODY_CHARS:
                errors[name] = [
                    f"{name}: the body is too long (at most {MAX_BODY_CHARS:,} characters)"
                ]
        if errors:
            raise InvalidDraft(errors)
        return recipients, subject, html, text

    def retry_unknown(
        self, session: Session, user: User, copy_id: int, *, message_id: int | None = None
    ) -> None:
        """Queue again a copy whose delivery is unknown: the user has said to resend it.

        The change is conditional on the copy still being ``unknown``: a worker that
        learns late that it was sent (and settles it ``sent``) wins, and the user's
        retry raises :class:`CannotRetry` instead of sending it twice.
        """
        copy = repository.copy_of_user(session, user.id, copy_id)
        if copy is None or (message_id is not None and copy.message_id != message_id):
            raise CopyNotFound(copy_id)
        now = utcnow()
        if not repository.requeue_unknown_copy(
            session, copy.id, now, "queued again at the sender's request"
        ):
            session.refresh(copy)
            raise CannotRetry(
                f"only a copy whose delivery is unknown can be resent; this one is {copy.status}"
            )
        session.expire(copy)
        repository.reopen_outbox_entry(session, copy.message_id, now)
        session.flush()
        after_commit(session, SendQueued(copy.message_id))


def _explain_settings(copy: RecipientCopy, user: User, draft: Draft, message: Message) -> None:
    """Add to a copy's decision reason what the user's settings switched off."""
    note = _settings_note(user)
    if not note or copy.decision == TrackingDecision.EMPTY_BODY:
        return
    if copy.decision == TrackingDecision.DISABLED_BY_USER:
        if not (draft.open_tracking or draft.link_tracking):
            return  # the user switched both off for this email anyway
        if not (message.open_tracking or message.link_tracking):
            copy.decision_reason = note  # the settings alone switched it off
            return
    copy.decision_reason = f"{copy.decision_reason} {note}"


def _settings_note(user: User) -> str:
    if not user.open_tracking_enabled and not user.link_tracking_enabled:
        return "Open and link tracking are turned off in your settings."
    if not user.open_tracking_enabled:
        return "Open tracking is turned off in your settings."
    if not user.link_tracking_enabled:
        return "Link tracking is turned off in your settings."
    return ""


message_service = MessageService()
