"""Sending rules: validating a draft and planning its send in one transaction.

Planning writes everything the outbox worker needs (the message with its
visible headers, one copy per recipient with its tracking decision and tracked
bodies, the links, an outbox entry) and sends nothing: the email leaves only
after the caller commits, when the worker picks the entry up.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.addresses import Address, parse_address, parse_address_list
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.errors import Conflict, InvalidInput, NotFound
from mailbeacon.kit.header_text import (
    body_text_problem,
    control_character_problem,
    header_text_problem,
    surrogate_problem,
)
from mailbeacon.mail import attachments, repository
from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.mail.events import SendQueued
from mailbeacon.mail.mime import html_to_text, new_message_id
from mailbeacon.mail.ports import ConsentPolicy, CopyRule, Instrumenter, Untracked
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
# The bodies of one email, in octets of UTF-8, the same for the compose form and the API.
# Octets, not characters: SMTP servers limit a message by its size (RFC 1870), and five
# million characters of Chinese or emoji are 15 to 20 MB of UTF-8 (about three times
# that once quoted-printable), which most servers refuse after the email was queued.
MAX_BODY_BYTES = 5_000_000
BODY_LIMIT_TEXT = f"{MAX_BODY_BYTES // 1_000_000} MB"
# Settings.MAX_ATTACHMENT_BYTES's default, for callers that pass none (scripts, tests).
DEFAULT_ATTACHMENT_LIMIT = 20_000_000

OWN_ADDRESS = Untracked(
    TrackingDecision.OWN_ADDRESS,
    "Sent to your own address: not tracked, so your own reading never counts as an open.",
)


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


@dataclass(frozen=True, slots=True)
class RecipientTracking:
    """Whether a recipient typed in compose would be tracked, and why (before sending)."""

    address: str
    kind: RecipientKind
    tracked: bool
    decision: TrackingDecision
    reason: str


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
            broken = surrogate_problem("".join(entries)) or control_character_problem(
                # Line breaks and tabs separate pasted addresses; any other control
                # character is refused here, before parsing would turn it into a space.
                "".join(entries).replace("\r", " ").replace("\n", " ").replace("\t", " ")
            )
            if broken is not None:
                # Not echoed back: a lone surrogate cannot even be written in an answer.
                errors[field_name] = [_sentence(broken)]
                continue
            parsed = parse_address_list(entries)
            if parsed.errors:
                errors[field_name] = parsed.errors
            for address in parsed.addresses:
                problem = header_text_problem(address.name)
                if problem is not None:
                    errors.setdefault(field_name, []).append(
                        _sentence(f"in the name given for {address.email}, {problem}")
                    )
                    continue
                if address.key not in seen:
                    seen.add(address.key)
                    result.append(Recipient(address, kind))
        if not errors and not result:
            errors["to"] = ["Add at least one recipient."]
        elif len(result) > MAX_RECIPIENTS:
            errors["to"] = [
                f"At most {MAX_RECIPIENTS} recipients per email (this one has {len(result)})."
            ]
        if errors:
            raise InvalidDraft(errors)
        return result

    def plan_send(
        self,
        session: Session,
        user: User,
        draft: Draft,
        *,
        instrumenter: Instrumenter,
        consent: ConsentPolicy | None = None,
        attachment_limit: int = DEFAULT_ATTACHMENT_LIMIT,
    ) -> Message:
        """Plan the send in the caller's unit of work; nothing leaves before it commits,
        and then the outbox worker is woken (``SendQueued``).

        The draft's files are stored with the message (every copy carries them), at
        most ``attachment_limit`` octets together.

        With ``consent`` (every route passes it) the organisation's policy rules each
        recipient's copy: untracked without consent or with tracking off, counted
        anonymously under an aggregate policy, and a tracked copy carries the opt-out
        footer. Raises :class:`InvalidDraft` or :class:`NoMailbox` before writing anything.
        """
        recipients, subject, html, text, files = self._checked(draft, attachment_limit)
        mailbox = repository.mailbox_for_user(session, user.id)
        if mailbox is None:
            raise NoMailbox(
                "No mailbox is connected: connect one in Settings > Email sync "
                "(or use the demo mailbox)."
            )

        problem = header_text_problem(mailbox.sender_name)
        if problem is not None:
            # Saved before names were checked (or taken from an account name): refuse now,
            # rather than queue copies that could never be sent.
            raise InvalidDraft(
                {
                    "sender_name": [
                        f"Your sender name (Settings > Email sync) cannot be sent as it is: "
                        f"{problem}. Change it there, then send again."
                    ]
                }
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
        attachments.store_files(session, message.id, files)

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
        own = _address_keys(mailbox.sender_address, user.email)
        rules: Mapping[str, CopyRule] = (
            {}
            if consent is None
            else consent.rules(
                session,
                user.organisation_id,
                {r.address.key: contacts.get(r.address.key) for r in recipients},
                demo=mailbox.is_demo,
            )
        )
        for copy, recipient in zip(copies, recipients, strict=True):
            rule = rules.get(recipient.address.key)
            if recipient.address.key in own:
                instrumenter.instrument_copy(session, message, copy, OWN_ADDRESS)
            elif rule is not None and not rule.tracked and rule.decision is not None:
                untracked = Untracked(rule.decision, rule.reason)
                instrumenter.instrument_copy(session, message, copy, untracked)
            else:
                instrumenter.instrument_copy(session, message, copy)
                _explain_settings(copy, user, draft, message)
                if rule is not None:
                    _apply_rule(copy, rule)
        session.add(OutboxEntry(message_id=message.id, created_at=now))
        # The switches as the user set them become the next draft's defaults.
        user.last_open_tracking = draft.open_tracking
        user.last_link_tracking = draft.link_tracking
        session.flush()
        after_commit(session, SendQueued(message.id))
        return message

    def recipient_tracking(
        self, session: Session, user: User, draft: Draft, *, consent: ConsentPolicy
    ) -> list[RecipientTracking]:
        """What compose shows beside each recipient before sending: tracked or not, and
        why. Addresses that cannot be read yet (still being typed) are left out; nothing
        is written (no contact is created before a send)."""
        found: list[Recipient] = []
        seen: set[str] = set()
        for entries, kind in (
            (draft.to, RecipientKind.TO),
            (draft.cc, RecipientKind.CC),
            (draft.bcc, RecipientKind.BCC),
        ):
            for address in parse_address_list(entries).addresses:
                if address.key not in seen and len(found) < MAX_RECIPIENTS:
                    seen.add(address.key)
                    found.append(Recipient(address, kind))
        if not found:
            return []
        mailbox = repository.mailbox_for_user(session, user.id)
        rules = consent.rules(
            session,
            user.organisation_id,
            dict.fromkeys(seen),
            demo=mailbox is not None and mailbox.is_demo,
        )
        own = _address_keys(mailbox.sender_address if mailbox else "", user.email)
        switched_on = (draft.open_tracking and user.open_tracking_enabled) or (
            draft.link_tracking and user.link_tracking_enabled
        )
        out = []
        for recipient in found:
            rule = rules.get(recipient.address.key)
            if recipient.address.key in own:
                tracked, decision, reason = False, OWN_ADDRESS.decision, OWN_ADDRESS.reason
            elif rule is not None and not rule.tracked and rule.decision is not None:
                tracked, decision, reason = False, rule.decision, rule.reason
            elif not switched_on:
                tracked, decision = False, TrackingDecision.DISABLED_BY_USER
                reason = "Tracking is switched off for this email."
            elif rule is not None and rule.decision is not None:
                tracked, decision, reason = True, rule.decision, rule.reason
            else:
                tracked, decision, reason = True, TrackingDecision.TRACKED, "Tracked."
            email = recipient.address.email
            out.append(RecipientTracking(email, recipient.kind, tracked, decision, reason))
        return out

    def _checked(
        self, draft: Draft, attachment_limit: int
    ) -> tuple[list[Recipient], str, str | None, str | None, list[AttachmentFile]]:
        """The draft's recipients, subject, bodies and files, or InvalidDraft with every
        problem."""
        errors: dict[str, list[str]] = {}
        try:
            recipients = self.recipients(draft)
        except InvalidDraft as exc:
            errors = exc.errors
            recipients = []
        # Checked as typed, before any trimming: a control character is refused, never
        # quietly changed, wherever it stands (see kit.header_text for why).
        problem = header_text_problem(draft.subject)
        subject = draft.subject.strip()
        if problem is not None:
            errors["subject"] = [_sentence(problem)]
        elif len(subject) > MAX_SUBJECT_CHARS:
            errors["subject"] = [f"At most {MAX_SUBJECT_CHARS} characters."]
        html = draft.body_html if draft.body_html and draft.body_html.strip() else None
        text = draft.body_text if draft.body_text and draft.body_text.strip() else None
        sizes: dict[str, int] = {}
        for name, body in (("body_html", html), ("body_text", text)):
            if body is None:
                continue
            problem = body_text_problem(body)
            if problem is not None:
                errors[name] = [_sentence(problem)]
            else:
                sizes[name] = len(body.encode("utf-8"))
        if sum(sizes.values()) > MAX_BODY_BYTES:
            size = math.ceil(sum(sizes.values()) / 100_000) / 10  # never rounded down to 5.0
            for name in sizes:
                errors[name] = [
                    f"The message is too large ({size:.1f} MB); it can be up to {BODY_LIMIT_TEXT}."
                ]
        files, problems = attachments.checked_files(draft.attachments, attachment_limit)
        if problems:
            errors["attachments"] = problems
        if errors:
            raise InvalidDraft(errors)
        return recipients, subject, html, text, files

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


def _sentence(reason: str) -> str:
    """A reason as a sentence of its own, shown at its field (which it does not name)."""
    reason = reason[:1].upper() + reason[1:]
    return reason if reason.endswith((".", "!", "?")) else reason + "."


def _address_keys(*addresses: str) -> set[str]:
    """The forms the addresses are compared by, as recipients' are (IDN domains in
    punycode, case folded), so a copy to one of them is recognised however it was typed."""
    keys: set[str] = set()
    for address in addresses:
        try:
            keys.add(parse_address(address).key)
        except ValueError:
            keys.add(address.strip().lower())
    keys.discard("")
    return keys


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


def _apply_rule(copy: RecipientCopy, rule: CopyRule) -> None:
    """A tracked copy takes the policy's decision (``aggregate``) and its opt-out footer."""
    if not (copy.open_tracked or copy.links_tracked):
        return
    if rule.decision is not None:
        copy.decision = rule.decision
        copy.decision_reason = rule.reason
    if rule.footer_html and copy.html_body is not None:
        copy.html_body = _with_footer(copy.html_body, rule.footer_html)
    if rule.footer_text and copy.text_body is not None:
        copy.text_body = f"{copy.text_body.rstrip()}\n\n{rule.footer_text}\n"


def _with_footer(html: str, footer: str) -> str:
    """The footer inside the body, before its closing tag if it has one."""
    end = html.lower().rfind("</body")
    return html + footer if end < 0 else html[:end] + footer + html[end:]


def _settings_note(user: User) -> str:
    if not user.open_tracking_enabled and not user.link_tracking_enabled:
        return "Open and link tracking are turned off in your settings."
    if not user.open_tracking_enabled:
        return "Open tracking is turned off in your settings."
    if not user.link_tracking_enabled:
        return "Link tracking is turned off in your settings."
    return ""


message_service = MessageService()
