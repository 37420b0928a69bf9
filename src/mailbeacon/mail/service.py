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

from mailbeacon.kit.clock import utcnow
from mailbeacon.mail import repository
from mailbeacon.mail.addresses import Address, parse_address_list
from mailbeacon.mail.mime import html_to_text, new_message_id
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
from mailbeacon.tracking.service import tracking_service
from mailbeacon.tracking.tokens import TokenCodec

MAX_RECIPIENTS = 1000
MAX_SUBJECT_CHARS = 998  # RFC 5322 section 2.1.1 line limit; also the column's size
MAX_BODY_CHARS = 5_000_000


class InvalidDraft(Exception):
    """The draft cannot be sent; ``errors`` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(m for messages in errors.values() for m in messages))
        self.errors = errors


class NoMailbox(Exception):
    """The user has no mailbox connection to send through."""


class CopyNotFound(Exception):
    """No such copy among the user's messages."""


class CannotRetry(Exception):
    """Only a copy whose delivery is unknown can be resent on the user's say."""


@dataclass(frozen=True, slots=True)
class Recipient:
    address: Address
    kind: RecipientKind


class MessageService:
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
        self, session: Session, user: User, draft: Draft, *, codec: TokenCodec, base_url: str
    ) -> Message:
        """Plan the send in the caller's transaction; nothing leaves before it commits.

        Raises :class:`InvalidDraft` (nothing written) or :class:`NoMailbox`.
        """
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
        mailbox = repository.mailbox_for_user(session, user.id)
        if mailbox is None:
            raise NoMailbox("connect a mailbox (or use the demo mailbox) before sending")

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
        tracking_service.record_links(session, message)
        note = _settings_note(user)
        for copy in copies:
            tracking_service.instrument_copy(session, message, copy, codec, base_url)
            if note and copy.decision != TrackingDecision.EMPTY_BODY:
                if copy.decision == TrackingDecision.DISABLED_BY_USER and not (
                    draft.open_tracking or draft.link_tracking
                ):
                    continue  # the user switched both off for this email anyway
                copy.decision_reason = _with_note(copy.decision, copy.decision_reason, note)
        session.add(OutboxEntry(message_id=message.id, created_at=now))
        # The switches as the user set them become the next draft's defaults.
        user.last_open_tracking = draft.open_tracking
        user.last_link_tracking = draft.link_tracking
        session.flush()
        return message

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


def _settings_note(user: User) -> str:
    if not user.open_tracking_enabled and not user.link_tracking_enabled:
        return "Open and link tracking are turned off in your settings."
    if not user.open_tracking_enabled:
        return "Open tracking is turned off in your settings."
    if not user.link_tracking_enabled:
        return "Link tracking is turned off in your settings."
    return ""


def _with_note(decision: TrackingDecision, reason: str, note: str) -> str:
    if decision == TrackingDecision.DISABLED_BY_USER and reason.startswith("Tracking was"):
        return note
    return f"{reason} {note}"


message_service = MessageService()
