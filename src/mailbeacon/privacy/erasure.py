"""A person's rights over their data: a copy of it (GDPR Art. 15 and 20) and its erasure
(Art. 17). Both are for admins, both cover every user's emails in the organisation,
and both are written to the audit log.

**Export** holds everything about the contact and nothing about anyone else: the
contact and its consent history, each email sent to them (subject, sender, when,
their own copy's delivery, tracking decision and figures, never the other
recipients), each event on their copy with its agent and network prefix, clicks
per link, and what they sent back (replies, automatic replies, bounces).

**Erasure** deletes the contact, its consent history, their copies (with the
events, link figures and notifications that hang on them), what came back from
them, the demo inbox deliveries naming them, the webhook events that named them (an
observer's, in the same transaction), and takes their address (and name)
out of the emails' To and Cc headers. The emails keep their figures, which were
anonymous counts all along: the Mail tab's totals do not jump. What remains is a
keyed stand-in for the address, so that a later email to it goes untracked
until the person consents again, and the audit entries with the address blanked.
On SQLite, deleted pages are overwritten (``secure_delete``) so the address does
not linger in the file.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.db import in_transaction
from mailbeacon.kit.addresses import parse_address, split_address_list
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.models import Contact
from mailbeacon.privacy import audit, repository
from mailbeacon.privacy.audit import Action, Actor
from mailbeacon.privacy.consent import ContactNotFound, address_key
from mailbeacon.privacy.events import ContactErased
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import ConsentRecordOut, ErasureOut


def _iso(value: datetime | None) -> str | None:
    return None if value is None else as_utc(value).isoformat()


def _target(session: Session, actor: Actor, address: str) -> tuple[str, Contact | None]:
    """The address (normalised) and its contact; a copy may exist without a contact."""
    try:
        key = address_key(address)
    except Exception as exc:
        raise ContactNotFound(address) from exc
    contact = repository.contact(session, actor.organisation_id, key)
    if contact is None and not repository.contact_copies(session, actor.organisation_id, None, key):
        raise ContactNotFound(address)
    return key, contact


def export_contact(
    session: Session, keys: PrivacyKeys, actor: Actor, address: str
) -> dict[str, Any]:
    """Everything the organisation holds about one person, as JSON-ready values."""
    audit.require_admin(actor, "export a contact's data")
    key, contact = _target(session, actor, address)
    contact_id = contact.id if contact is not None else None
    copies = repository.contact_copies(session, actor.organisation_id, contact_id, key)
    copy_ids = [c.id for c in copies]
    events: dict[int, list[dict[str, Any]]] = {}
    for e in reversed(repository.events_of_copies(session, copy_ids)):
        events.setdefault(e.copy_id, []).append(
            {
                "occurred_at": _iso(e.occurred_at),
                "kind": e.kind,
                "label": e.label,
                "reason": e.reason,
                "link": e.link_url,
                "user_agent": e.user_agent,
                "network_prefix": e.ip_prefix,
                "network": e.network,
                "possibly_forwarded": e.possibly_forwarded,
            }
        )
    clicks: dict[int, list[dict[str, Any]]] = {}
    for s in repository.link_stats_of_copies(session, copy_ids):
        clicks.setdefault(s.copy_id, []).append(
            {
                "link": s.url,
                "clicks": s.click_count,
                "machine_clicks": s.machine_click_count,
                "first_click_at": _iso(s.first_click_at),
                "last_click_at": _iso(s.last_click_at),
            }
        )
    emails = [
        {
            "email_id": c.message_id,
            "subject": c.subject,
            "from": c.sender_address,
            "sent_at": _iso(c.sent_at or c.message_sent_at),
            "you_were": c.kind,
            "delivery": c.status,
            "address_sent_to": c.address,
            "tracking_decision": c.decision,
            "tracking_decision_reason": c.decision_reason,
            "pixel": c.open_tracked,
            "links_tracked": c.links_tracked,
            "opens": c.open_count,
            "possibly_forwarded_opens": c.forwarded_open_count,
            "clicks": c.click_count,
            "machine_hits": c.machine_event_count,
            "first_open_at": _iso(c.first_open_at),
            "last_open_at": _iso(c.last_open_at),
            "first_click_at": _iso(c.first_click_at),
            "last_click_at": _iso(c.last_click_at),
            "bounce": {"code": c.bounce_status, "diagnostic": c.bounce_diagnostic}
            if c.bounced_at
            else None,
            "events": events.get(c.id, []),
            "clicks_per_link": clicks.get(c.id, []),
        }
        for c in copies
    ]
    replies = [
        {
            "email_id": r.message_id,
            "kind": r.kind,
            "from_address": r.from_address,
            "from_name": r.from_name,
            "subject": r.subject,
            "received_at": _iso(r.received_at),
            "text": r.new_text,
            "full_text": r.full_text,
        }
        for r in repository.received_from_contact(session, actor.organisation_id, copy_ids, key)
    ]
    history = (
        [
            ConsentRecordOut.model_validate(r, from_attributes=True).model_dump(mode="json")
            for r in repository.consent_history(session, contact.id)
        ]
        if contact is not None
        else []
    )
    org = repository.organisation(session, actor.organisation_id)
    audit.record(session, keys, actor, Action.CONTACT_EXPORTED, subject=key)
    return {
        "exported_at": utcnow().isoformat(),
        "controller": org.name if org is not None else "",
        "contact": {
            "address": key,
            "name": contact.name if contact is not None else "",
            "created_at": _iso(contact.created_at) if contact is not None else None,
            "consent_state": contact.consent_state if contact is not None else "unknown",
            "consent_updated_at": _iso(contact.consent_updated_at) if contact else None,
        },
        "consent_history": history,
        "emails": emails,
        "replies": replies,
    }


def _without(header: str, address: str) -> str:
    """An address list header without the entries for one address."""
    kept = []
    for piece in split_address_list(header):
        try:
            if parse_address(piece).key == address:
                continue
        except ValueError:
            if address in piece.lower():
                continue
        kept.append(piece)
    return ", ".join(kept)


def erase_contact(session: Session, keys: PrivacyKeys, actor: Actor, address: str) -> ErasureOut:
    """Erase a person from the organisation (see the module's docstring); admins only."""
    audit.require_admin(actor, "erase a contact")
    key, contact = _target(session, actor, address)
    if session.get_bind().dialect.name == "sqlite":
        # Freed pages are overwritten with zeros rather than left in the file.
        session.connection().exec_driver_sql("PRAGMA secure_delete = ON")
    contact_id = contact.id if contact is not None else None
    copies = repository.contact_copies(session, actor.organisation_id, contact_id, key)
    touched = {c.message_id for c in copies}
    removed, received = repository.erase_copies(
        session, actor.organisation_id, [c.id for c in copies], key
    )
    for message in repository.messages_by_id(session, touched):
        message.to_header = _without(message.to_header, key)
        message.cc_header = _without(message.cc_header, key)
    demo = repository.erase_demo_deliveries(session, key)
    # Webhook events that named the person (their reply, their consent) go too.
    in_transaction(session, ContactErased(actor.organisation_id, key))
    records = 0
    if contact is not None:
        records = len(repository.consent_history(session, contact.id))
        repository.delete_contact(session, contact.id)
    stand_in = keys.address_key(actor.organisation_id, key)
    now = utcnow()
    repository.remember_erased(session, actor.organisation_id, stand_in, now)
    repository.blank_audit_subject(session, actor.organisation_id, stand_in)
    audit.record(
        session,
        keys,
        actor,
        Action.CONTACT_ERASED,
        detail={"copies": removed, "replies": received, "demo_deliveries": demo},
        at=now,
        # The erasure's own entry names nobody, but is tied to the same stand-in.
        subject_key=stand_in,
    )
    session.flush()
    return ErasureOut(
        address=key, copies=removed, replies=received, demo_deliveries=demo, consent_records=records
    )
