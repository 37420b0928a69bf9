"""Reading contacts: the list, and one contact with consent history, emails and events.

Contacts and their consent belong to the organisation: every user sees them (and
compose needs them). Tracking data stays the sender's: a contact's page shows
the emails the viewer sent them, with those emails' events, never another
user's. Each view of a contact's tracking data is written to the audit log in
the same unit of work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.models import ConsentState, Contact
from mailbeacon.privacy import audit, repository
from mailbeacon.privacy.audit import Action, Actor
from mailbeacon.privacy.consent import find_contact
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import (
    ConsentRecordOut,
    ContactDetailOut,
    ContactEmailOut,
    ContactEventOut,
    ContactOut,
    ContactPageOut,
)

PAGE = 50
EVENTS_PAGE = 100
MAX_SEARCH = 200


def contact_out(contact: Contact) -> ContactOut:
    return ContactOut(
        address=contact.email,
        name=contact.name,
        consent_state=ConsentState(contact.consent_state),
        consent_updated_at=contact.consent_updated_at,
        created_at=contact.created_at,
    )


def contact_page(
    session: Session,
    actor: Actor,
    *,
    q: str = "",
    state: ConsentState | None = None,
    before: str | None = None,
    limit: int = PAGE,
) -> ContactPageOut:
    """A page of the organisation's contacts, newest first; ``q`` searches address and name."""
    limit = max(1, min(limit, 200))
    found = repository.list_contacts(
        session,
        actor.organisation_id,
        # No address or name holds a NUL, and PostgreSQL refuses one in a parameter.
        q=" ".join(q.replace("\x00", " ").split())[:MAX_SEARCH],
        state=state.value if state else None,
        after=decode_cursor(before),
        limit=limit + 1,
    )
    items = found[:limit]
    last = items[-1] if items and len(found) > limit else None
    return ContactPageOut(
        items=[contact_out(c) for c in items],
        older_cursor=encode_cursor(last.created_at, last.id) if last else None,
    )


@dataclass(frozen=True, slots=True)
class _Tracking:
    emails: list[ContactEmailOut]
    copy_ids: list[int]


def _own_tracking(session: Session, actor: Actor, contact: Contact) -> _Tracking:
    sender = actor.user.id if actor.user is not None else None
    rows = repository.contact_copies(
        session, actor.organisation_id, contact.id, contact.email, sender_id=sender
    )
    return _Tracking([_email_out(r) for r in rows], [r.id for r in rows])


def _email_out(row: Any) -> ContactEmailOut:
    return ContactEmailOut(
        message_id=row.message_id,
        subject=row.subject,
        sent_at=row.sent_at or row.message_sent_at,
        kind=row.kind,
        status=row.status,
        decision=row.decision,
        decision_reason=row.decision_reason,
        open_count=row.open_count,
        click_count=row.click_count,
        forwarded_open_count=row.forwarded_open_count,
        first_open_at=row.first_open_at,
        last_open_at=row.last_open_at,
        replied_at=row.replied_at,
    )


def _event_out(row: Any) -> ContactEventOut:
    return ContactEventOut(
        occurred_at=as_utc(row.occurred_at),
        message_id=row.message_id,
        kind=row.kind,
        label=row.label,
        reason=row.reason,
        link_url=row.link_url,
        possibly_forwarded=row.possibly_forwarded,
    )


def _events_page(
    session: Session, copy_ids: list[int], before: str | None
) -> tuple[list[ContactEventOut], str | None]:
    rows = repository.events_of_copies(
        session, copy_ids, before=decode_cursor(before), limit=EVENTS_PAGE + 1
    )
    items = rows[:EVENTS_PAGE]
    last = items[-1] if items and len(rows) > EVENTS_PAGE else None
    cursor = encode_cursor(as_utc(last.occurred_at), last.id) if last else None
    return [_event_out(r) for r in items], cursor


def contact_detail(
    session: Session,
    keys: PrivacyKeys,
    actor: Actor,
    address: str,
    *,
    action: Action = Action.CONTACT_VIEWED,
) -> ContactDetailOut:
    """One contact as its page (or the API) shows it; the view is audited."""
    contact = find_contact(session, actor, address)
    tracking = _own_tracking(session, actor, contact)
    events, cursor = _events_page(session, tracking.copy_ids, None)
    history = [
        ConsentRecordOut.model_validate(r, from_attributes=True)
        for r in repository.consent_history(session, contact.id)
    ]
    audit.record(session, keys, actor, action, subject=contact.email)
    return ContactDetailOut(
        **contact_out(contact).model_dump(),
        consent_history=history,
        emails=tracking.emails,
        events=events,
        events_older_cursor=cursor,
    )


def contact_timeline(
    session: Session, keys: PrivacyKeys, actor: Actor, address: str, *, before: str | None
) -> tuple[ContactOut, list[ContactEventOut], str | None]:
    """A page of the contact's events in the viewer's emails, newest first; audited."""
    contact = find_contact(session, actor, address)
    tracking = _own_tracking(session, actor, contact)
    events, cursor = _events_page(session, tracking.copy_ids, before)
    audit.record(
        session,
        keys,
        actor,
        Action.TIMELINE_VIEWED,
        subject=contact.email,
        detail={"page": before or "first"},
    )
    return contact_out(contact), events, cursor
