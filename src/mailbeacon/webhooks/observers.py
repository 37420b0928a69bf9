"""Webhooks as an observer of what the other domains record: each fact an endpoint wants
becomes an event row, with its deliveries, in the transaction that records the fact.

* the hit pipeline (``tracking.events.HitObserver``): ``copy.opened`` for a person's
  first open of a copy (every open for endpoints that ask), ``link.clicked`` for a
  person's click. Machine hits and the sender's own views (labelled ``self``) never
  produce either; the payload carries the label and the reason it was judged so;
* the send path (``mail.events.DeliveryObserver``): ``message.sent`` once a send
  request settled with at least one copy sent, ``copy.failed`` for each copy the
  mail server refused for good;
* mailbox sync (``sync.events.ReceivedObserver``): ``reply.received``,
  ``auto_reply.received`` and ``copy.bounced``;
* the privacy domain (``privacy.events``, raised ``in_transaction``):
  ``contact.consent_changed``; and an erased contact's events are deleted.

So an event exists exactly when its fact committed: never lost (the row commits
with the fact), never for a rolled-back change (the row rolls back with it). The
worker delivers it after commit (``WebhooksDue`` wakes it sooner than its poll).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import Session

from mailbeacon.db import after_commit
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail.events import MessageSettled
from mailbeacon.models import CopyStatus, EventKind, ReceivedKind
from mailbeacon.privacy.events import ConsentChanged, ContactErased
from mailbeacon.sync.events import ReceivedStored
from mailbeacon.tracking.events import StoredEvent
from mailbeacon.webhooks import repository
from mailbeacon.webhooks.events import EventType, Fact, WebhooksDue, iso


def _message(row: Any) -> dict[str, Any]:
    return {"id": row.message_id, "subject": row.subject, "message_id": row.message_id_header}


def _user(row: Any) -> dict[str, Any]:
    return {"id": row.user_id, "email": row.user_email}


def _copy(row: Any) -> dict[str, Any]:
    return {"id": row.id, "recipient": row.address, "kind": row.kind}


class HitWebhooks:
    """``copy.opened`` and ``link.clicked`` from stored hits (implements ``HitObserver``)."""

    def on_events_stored(self, session: Session, events: Sequence[StoredEvent]) -> None:
        """Runs inside the pipeline's transaction, after the copies' figures were updated
        (the first-open rule reads them and takes the batch's own share back out)."""
        people = [e for e in events if e.sender_id is not None and e.by_person]
        if not people:
            return
        conn = session.connection()
        targets = repository.targets(conn, {e.sender_id for e in people if e.sender_id})
        if not targets:
            return
        people = [e for e in people if e.sender_id in targets]
        copies = repository.copy_context(conn, {e.copy_id for e in people})
        links = repository.link_names(
            conn, {(e.message_id, e.link_position) for e in people if e.link_position is not None}
        )
        opens_in_batch: dict[int, int] = defaultdict(int)
        for e in people:
            if e.kind == EventKind.OPEN:
                opens_in_batch[e.copy_id] += 1
        seen: dict[int, int] = defaultdict(int)
        facts: list[Fact] = []
        for e in people:
            copy = copies.get(e.copy_id)
            if copy is None or e.sender_id is None:
                continue
            data: dict[str, Any] = {
                "message": _message(copy),
                "user": _user(copy),
                "copy": _copy(copy),
                "occurred_at": iso(e.occurred_at),
                "label": str(e.label),
                "reason": e.reason,
            }
            if e.kind == EventKind.OPEN:
                # The figures count this batch's opens already; events come in time order.
                earlier = copy.open_count - opens_in_batch[e.copy_id] + seen[e.copy_id]
                seen[e.copy_id] += 1
                data["first"] = earlier <= 0
                kind, first = EventType.COPY_OPENED, earlier <= 0
            elif e.link_position is not None:
                url, text = links.get((e.message_id, e.link_position), ("", ""))
                data["link"] = {"position": e.link_position, "url": url, "text": text}
                kind, first = EventType.LINK_CLICKED, True
            else:
                continue
            facts.append(
                Fact(
                    kind,
                    e.sender_id,
                    e.occurred_at,
                    data,
                    message_id=e.message_id,
                    copy_id=e.copy_id,
                    first=first,
                )
            )
        if repository.record(conn, facts, targets, utcnow()):
            after_commit(session, WebhooksDue())


class SendWebhooks:
    """``message.sent`` and ``copy.failed`` from settled send requests (implements
    ``mail.events.DeliveryObserver``)."""

    TOLD = (EventType.MESSAGE_SENT, EventType.COPY_FAILED)

    def on_messages_settled(self, conn: Connection, settled: Sequence[MessageSettled]) -> None:
        """Runs inside the transaction that closes the send requests. A request reopened
        and settled again tells only what it has not told before. The worker is woken by
        the runtime on ``MessageDelivered`` (after commit) or finds them at its poll."""
        settled = [s for s in settled if s.copies]
        targets = repository.targets(conn, {s.user_id for s in settled})
        if not targets:
            return
        settled = [s for s in settled if s.user_id in targets]
        told = repository.told_already(conn, self.TOLD, [s.message_id for s in settled])
        emails = repository.user_emails(conn, {s.user_id for s in settled})
        now = utcnow()
        facts: list[Fact] = []
        for s in settled:
            message = {"id": s.message_id, "subject": s.subject, "message_id": s.message_id_header}
            user = {"id": s.user_id, "email": emails.get(s.user_id, "")}
            sent = [c for c in s.copies if c.status == CopyStatus.SENT]
            if sent and (str(EventType.MESSAGE_SENT), s.message_id, None) not in told:
                copies = [
                    {
                        "id": c.copy_id,
                        "recipient": c.address,
                        "kind": c.kind,
                        "status": c.status,
                        "sent_at": iso(c.sent_at),
                        "smtp_reply": c.reply,
                    }
                    for c in s.copies
                ]
                facts.append(
                    Fact(
                        EventType.MESSAGE_SENT,
                        s.user_id,
                        s.sent_at or now,
                        {
                            "message": message,
                            "user": user,
                            "sent_at": iso(s.sent_at),
                            "copies": copies,
                        },
                        message_id=s.message_id,
                    )
                )
            for c in s.copies:
                if c.status != CopyStatus.FAILED:
                    continue
                if (str(EventType.COPY_FAILED), s.message_id, c.copy_id) in told:
                    continue
                copy = {"id": c.copy_id, "recipient": c.address, "kind": c.kind}
                facts.append(
                    Fact(
                        EventType.COPY_FAILED,
                        s.user_id,
                        now,
                        {"message": message, "user": user, "copy": copy, "smtp_reply": c.reply},
                        message_id=s.message_id,
                        copy_id=c.copy_id,
                    )
                )
        repository.record(conn, facts, targets, now)


class ReceivedWebhooks:
    """``reply.received``, ``auto_reply.received`` and ``copy.bounced`` from stored mail
    (implements ``sync.events.ReceivedObserver``)."""

    def on_received(self, session: Session, events: Sequence[ReceivedStored]) -> None:
        """Runs inside the transaction that stored the mail, in the order it arrived."""
        if not events:
            return
        conn = session.connection()
        targets = repository.targets(conn, {e.user_id for e in events})
        if not targets:
            return
        events = [e for e in events if e.user_id in targets]
        copies = repository.copy_context(conn, {e.copy_id for e in events if e.copy_id})
        messages = repository.message_context(conn, {e.message_id for e in events})
        bounces = repository.bounce_details(
            conn, [e.received_id for e in events if e.kind == ReceivedKind.BOUNCE]
        )
        facts: list[Fact] = []
        for e in events:
            message = messages.get(e.message_id)
            if message is None:
                continue
            copy = copies.get(e.copy_id) if e.copy_id is not None else None
            data: dict[str, Any] = {
                "message": {
                    "id": message.id,
                    "subject": message.subject,
                    "message_id": message.message_id_header,
                },
                "user": _user(message),
                "copy": _copy(copy) if copy is not None else None,
                "received_at": iso(e.received_at),
            }
            if e.kind == ReceivedKind.BOUNCE:
                if copy is None:
                    continue
                status, diagnostic = bounces.get(e.received_id, ("", ""))
                data["bounce"] = {"status": status, "diagnostic": diagnostic}
                kind = EventType.COPY_BOUNCED
            else:
                data["from"] = {"address": e.from_address, "name": e.from_name}
                kind = (
                    EventType.REPLY_RECEIVED
                    if e.kind == ReceivedKind.REPLY
                    else EventType.AUTO_REPLY_RECEIVED
                )
            facts.append(
                Fact(
                    kind,
                    e.user_id,
                    e.received_at,
                    data,
                    message_id=e.message_id,
                    copy_id=e.copy_id,
                )
            )
        if repository.record(conn, facts, targets, utcnow()):
            after_commit(session, WebhooksDue())


class ContactWebhooks:
    """``contact.consent_changed`` for every endpoint of the organisation that asked, and
    the erasure of the events that named an erased contact (observes ``privacy.events``
    inside the transaction that made the change)."""

    def on_consent_changed(self, session: Session, change: ConsentChanged) -> None:
        conn = session.connection()
        wanting = [
            (user_id, target)
            for user_id, target in repository.organisation_targets(conn, change.organisation_id)
            if str(EventType.CONTACT_CONSENT_CHANGED) in target.event_types
        ]
        if not wanting:
            return
        data: dict[str, Any] = {
            "contact": {"address": change.address},
            "consent": {
                "state": str(change.state),
                "previous_state": str(change.previous_state),
                "method": str(change.method),
                "recorded_at": iso(change.recorded_at),
                "recorded_by": change.recorded_by,
            },
        }
        # One event per endpoint, owned by the endpoint's user: the change is the
        # organisation's, and each owner's delivery log shows their own.
        chosen = [
            (
                Fact(
                    EventType.CONTACT_CONSENT_CHANGED,
                    user_id,
                    change.recorded_at,
                    data,
                    ordering_key=f"contact:{change.organisation_id}:{change.address}",
                ),
                [target.endpoint_id],
            )
            for user_id, target in wanting
        ]
        if repository.record_for(conn, chosen, utcnow()):
            after_commit(session, WebhooksDue())

    def on_contact_erased(self, session: Session, erased: ContactErased) -> None:
        repository.forget_address(session.connection(), erased.organisation_id, erased.address)
