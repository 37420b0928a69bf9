"""Every query of the webhooks domain.

The writer's queries (``targets``, ``record``, the context of copies and links)
run inside the transaction of whatever they report (the hit pipeline's batch,
mailbox sync's batch, the outbox worker's closing of a send request), on its
connection, with SQLAlchemy Core; a batch nobody subscribed to costs one query.
The worker's queries claim and settle deliveries; the pages' queries take the
request's session and are scoped to what the user may see.

Claiming is what keeps two workers from posting the same delivery at once, and
what keeps the order of an email's events: on PostgreSQL the due rows are picked
with ``FOR UPDATE SKIP LOCKED``; on SQLite the claim runs in a transaction begun
``IMMEDIATE`` (the one write lock) and the ``UPDATE`` re-checks the status. A
delivery is due only when no earlier delivery of the same endpoint and ordering
key is still open (see ``webhooks.events``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    and_,
    delete,
    exists,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.orm import Session

from mailbeacon.models import (
    DeliveryStatus,
    Message,
    MessageLink,
    ReceivedMail,
    RecipientCopy,
    User,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookScope,
)
from mailbeacon.webhooks.events import EventType, Fact, payload

_endpoints = cast(Table, WebhookEndpoint.__table__)
_events = cast(Table, WebhookEvent.__table__)
_deliveries = cast(Table, WebhookDelivery.__table__)
_users = cast(Table, User.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_messages = cast(Table, Message.__table__)
_links = cast(Table, MessageLink.__table__)
_received = cast(Table, ReceivedMail.__table__)

_OPEN = (DeliveryStatus.PENDING, DeliveryStatus.DELIVERING)
ERROR_CHARS = 300


# ------------------------------------------------------------------ the writer


@dataclass(frozen=True, slots=True)
class Target:
    """An enabled endpoint that hears about a user's email."""

    endpoint_id: int
    event_types: frozenset[str]
    every_open: bool

    def wants(self, fact: Fact) -> bool:
        if fact.type not in self.event_types:
            return False
        return fact.type != EventType.COPY_OPENED or fact.first or self.every_open


def targets(conn: Connection, user_ids: Iterable[int]) -> dict[int, list[Target]]:
    """The enabled endpoints hearing about each user's email: their own, and their
    organisation's."""
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    u, e = _users, _endpoints
    heard = and_(
        e.c.enabled.is_(True),
        or_(
            and_(e.c.scope == WebhookScope.USER, e.c.user_id == u.c.id),
            and_(
                e.c.scope == WebhookScope.ORGANISATION,
                e.c.organisation_id == u.c.organisation_id,
            ),
        ),
    )
    found: dict[int, list[Target]] = {}
    rows = conn.execute(
        select(u.c.id, e.c.id, e.c.event_types, e.c.every_open)
        .select_from(u.join(e, heard))
        .where(u.c.id.in_(ids))
        .order_by(u.c.id, e.c.id)
    )
    for user_id, endpoint_id, types, every_open in rows:
        found.setdefault(user_id, []).append(
            Target(endpoint_id, frozenset(types.split()), bool(every_open))
        )
    return found


def organisation_targets(conn: Connection, organisation_id: int) -> list[tuple[int, Target]]:
    """Every enabled endpoint in an organisation, its members' own and the
    organisation's, with the user it belongs to."""
    rows = conn.execute(
        select(_endpoints.c.user_id, _endpoints.c.id, _endpoints.c.event_types)
        .where(
            _endpoints.c.organisation_id == organisation_id,
            _endpoints.c.enabled.is_(True),
        )
        .order_by(_endpoints.c.id)
    )
    return [
        (user_id, Target(endpoint_id, frozenset(types.split()), every_open=False))
        for user_id, endpoint_id, types in rows
    ]


def forget_address(conn: Connection, organisation_id: int, address: str) -> int:
    """Delete the organisation's events whose payload names ``address`` (with their
    deliveries, by cascade); return how many. The payload is JSON as written, so the
    address is looked for as a JSON string, in any case."""
    needle = json.dumps(address.lower(), ensure_ascii=False)
    members = select(_users.c.id).where(_users.c.organisation_id == organisation_id)
    doomed = select(_events.c.id).where(
        _events.c.user_id.in_(members),
        func.lower(_events.c.payload).contains(needle, autoescape=True),
    )
    ids = list(conn.scalars(doomed))
    if ids:
        conn.execute(delete(_events).where(_events.c.id.in_(ids)))
    return len(ids)


def record(
    conn: Connection,
    facts: Sequence[Fact],
    targets_by_user: Mapping[int, Sequence[Target]],
    now: datetime,
) -> int:
    """Write each fact some endpoint wants as an event, and one delivery per such endpoint,
    due now; return how many deliveries. Events get ids in the order of ``facts``."""
    chosen: list[tuple[Fact, list[int]]] = []
    for fact in facts:
        wanting = [t.endpoint_id for t in targets_by_user.get(fact.user_id, ()) if t.wants(fact)]
        if wanting:
            chosen.append((fact, wanting))
    if not chosen:
        return 0
    return record_for(conn, chosen, now)


def record_for(conn: Connection, chosen: Sequence[tuple[Fact, list[int]]], now: datetime) -> int:
    """Write events and their deliveries to the endpoints given with each."""
    event_rows = [
        {
            "uid": fact.uid,
            "type": str(fact.type),
            "user_id": fact.user_id,
            "message_id": fact.message_id,
            "copy_id": fact.copy_id,
            "payload": payload(fact),
            "created_at": now,
        }
        for fact, _ in chosen
    ]
    # Ids in the order of the rows (SQLAlchemy orders a multi-row insert for it): the
    # delivery order of an email's events follows them.
    inserted = conn.execute(
        insert(_events).returning(_events.c.uid, _events.c.id, sort_by_parameter_order=True),
        event_rows,
    )
    ids = {uid: event_id for uid, event_id in inserted}
    delivery_rows = [
        {
            "endpoint_id": endpoint_id,
            "event_id": ids[fact.uid],
            "ordering_key": fact.key()[:64],
            "status": DeliveryStatus.PENDING,
            "attempts": 0,
            "next_attempt_at": now,
            "last_error": "",
            "created_at": now,
        }
        for fact, endpoint_ids in chosen
        for endpoint_id in endpoint_ids
    ]
    conn.execute(insert(_deliveries), delivery_rows)
    return len(delivery_rows)


def copy_context(conn: Connection, copy_ids: Iterable[int]) -> dict[int, Any]:
    """Each copy with its email and sender, as the payloads name them."""
    ids = sorted(set(copy_ids))
    if not ids:
        return {}
    c, m, u = _copies, _messages, _users
    rows = conn.execute(
        select(
            c.c.id,
            c.c.address,
            c.c.kind,
            c.c.open_count,
            c.c.message_id,
            m.c.subject,
            m.c.message_id_header,
            m.c.sent_at,
            u.c.id.label("user_id"),
            u.c.email.label("user_email"),
        )
        .join(m, m.c.id == c.c.message_id)
        .join(u, u.c.id == m.c.user_id)
        .where(c.c.id.in_(ids))
    )
    return {row.id: row for row in rows}


def message_context(conn: Connection, message_ids: Iterable[int]) -> dict[int, Any]:
    """Each email with its sender, as the payloads name them."""
    ids = sorted(set(message_ids))
    if not ids:
        return {}
    m, u = _messages, _users
    rows = conn.execute(
        select(
            m.c.id,
            m.c.subject,
            m.c.message_id_header,
            m.c.sent_at,
            u.c.id.label("user_id"),
            u.c.email.label("user_email"),
        )
        .join(u, u.c.id == m.c.user_id)
        .where(m.c.id.in_(ids))
    )
    return {row.id: row for row in rows}


def user_emails(conn: Connection, user_ids: Iterable[int]) -> dict[int, str]:
    ids = sorted(set(user_ids))
    if not ids:
        return {}
    return {
        row.id: row.email
        for row in conn.execute(select(_users.c.id, _users.c.email).where(_users.c.id.in_(ids)))
    }


def link_names(
    conn: Connection, pairs: Iterable[tuple[int, int]]
) -> dict[tuple[int, int], tuple[str, str]]:
    """The destination and text of each (email, link position)."""
    wanted = sorted(set(pairs))
    if not wanted:
        return {}
    rows = conn.execute(
        select(_links.c.message_id, _links.c.position, _links.c.url, _links.c.text).where(
            tuple_(_links.c.message_id, _links.c.position).in_(wanted)
        )
    )
    return {(r.message_id, r.position): (r.url, r.text) for r in rows}


def bounce_details(conn: Connection, received_ids: Iterable[int]) -> dict[int, tuple[str, str]]:
    """The status code and diagnostic of each stored bounce."""
    ids = sorted(set(received_ids))
    if not ids:
        return {}
    rows = conn.execute(
        select(_received.c.id, _received.c.bounce_status, _received.c.bounce_diagnostic).where(
            _received.c.id.in_(ids)
        )
    )
    return {r.id: (r.bounce_status, r.bounce_diagnostic) for r in rows}


def told_already(
    conn: Connection, types: Sequence[EventType], message_ids: Iterable[int]
) -> set[tuple[str, int, int | None]]:
    """(type, message, copy) of the events of these types already written for these emails:
    a send request reopened (a copy resent) does not tell its settling twice."""
    ids = sorted(set(message_ids))
    if not ids:
        return set()
    rows = conn.execute(
        select(_events.c.type, _events.c.message_id, _events.c.copy_id).where(
            _events.c.message_id.in_(ids), _events.c.type.in_([str(t) for t in types])
        )
    )
    return {(r.type, r.message_id, r.copy_id) for r in rows}


# ------------------------------------------------------------------ the worker


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    id: int
    attempts: int  # this one included
    endpoint_id: int
    url: str
    secret_sealed: str
    webhook_id: str
    type: str
    payload: str
    event_created_at: datetime


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one claimed delivery ends this attempt."""

    delivery_id: int
    endpoint_id: int
    status: DeliveryStatus  # delivered, pending (retry later) or failed (given up)
    response_status: int | None
    error: str
    next_attempt_at: datetime | None = None
    # The receiver answered 410 Gone: the endpoint is disabled at once.
    gone: bool = False


def claim(conn: Connection, worker_id: str, now: datetime, limit: int) -> list[ClaimedDelivery]:
    """Move up to ``limit`` due deliveries to ``delivering`` under this worker, in the
    caller's transaction (on SQLite begun with the write lock), and load what posting
    them needs."""
    if limit <= 0:
        return []
    d, e = _deliveries, _endpoints
    earlier = d.alias("earlier")
    waits = (
        exists()
        .where(
            earlier.c.endpoint_id == d.c.endpoint_id,
            earlier.c.ordering_key == d.c.ordering_key,
            earlier.c.event_id < d.c.event_id,
            earlier.c.status.in_(_OPEN),
        )
        .correlate(d)
    )
    due = (
        select(d.c.id)
        .join(e, e.c.id == d.c.endpoint_id)
        .where(
            d.c.status == DeliveryStatus.PENDING,
            d.c.next_attempt_at <= now,
            e.c.enabled.is_(True),
            ~waits,
        )
        .order_by(d.c.next_attempt_at, d.c.event_id)
        .limit(limit)
    )
    values = {
        "status": DeliveryStatus.DELIVERING,
        "claimed_by": worker_id,
        "claimed_at": now,
        "attempts": d.c.attempts + 1,
    }
    if conn.dialect.name == "postgresql":
        chosen = due.with_for_update(skip_locked=True, of=d).cte("due")
        stmt = update(d).where(d.c.id == chosen.c.id)
    else:
        stmt = update(d).where(d.c.id.in_(due.scalar_subquery()))
    ids = [
        row[0]
        for row in conn.execute(
            stmt.where(d.c.status == DeliveryStatus.PENDING).values(values).returning(d.c.id)
        )
    ]
    if not ids:
        return []
    ev = _events
    rows = conn.execute(
        select(
            d.c.id,
            d.c.attempts,
            d.c.endpoint_id,
            e.c.url,
            e.c.secret_sealed,
            ev.c.uid,
            ev.c.type,
            ev.c.payload,
            ev.c.created_at,
        )
        .join(e, e.c.id == d.c.endpoint_id)
        .join(ev, ev.c.id == d.c.event_id)
        .where(d.c.id.in_(ids))
        .order_by(d.c.event_id)
    )
    return [ClaimedDelivery(*row) for row in rows]


def settle(
    conn: Connection, worker_id: str, now: datetime, settlements: Sequence[Settlement]
) -> None:
    """Write each attempt's outcome, and what it says about its endpoint: a delivery clears
    the endpoint's failing streak, a failure starts one (if none runs)."""
    if not settlements:
        return
    d, e = _deliveries, _endpoints
    for s in sorted(settlements, key=lambda s: s.delivery_id):
        conn.execute(
            update(d)
            .where(
                d.c.id == s.delivery_id,
                d.c.claimed_by == worker_id,
                d.c.status == DeliveryStatus.DELIVERING,
            )
            .values(
                status=s.status,
                claimed_by=None,
                claimed_at=None,
                last_attempt_at=now,
                response_status=s.response_status,
                last_error=s.error[:ERROR_CHARS],
                next_attempt_at=s.next_attempt_at if s.status == DeliveryStatus.PENDING else None,
                delivered_at=now if s.status == DeliveryStatus.DELIVERED else None,
            )
        )
    failing = sorted({s.endpoint_id for s in settlements if s.status != DeliveryStatus.DELIVERED})
    working = sorted({s.endpoint_id for s in settlements if s.status == DeliveryStatus.DELIVERED})
    if failing:
        conn.execute(
            update(e)
            .where(e.c.id.in_(failing), e.c.failing_since.is_(None))
            .values(failing_since=now)
        )
    if working:
        # One delivery in the round says the receiver works, whatever else failed.
        conn.execute(
            update(e).where(e.c.id.in_(working)).values(failing_since=None, last_delivered_at=now)
        )


def endpoints_to_disable(
    conn: Connection, endpoint_ids: Sequence[int], failing_before: datetime, gone: Sequence[int]
) -> list[Any]:
    """Of these endpoints, the enabled ones that answered 410 or fail since before the cutoff."""
    if not endpoint_ids:
        return []
    e = _endpoints
    return list(
        conn.execute(
            select(e.c.id, e.c.user_id, e.c.url)
            .where(
                e.c.id.in_(sorted(set(endpoint_ids))),
                e.c.enabled.is_(True),
                or_(e.c.id.in_(sorted(set(gone))), e.c.failing_since <= failing_before),
            )
            .order_by(e.c.id)
        )
    )


def disable_endpoint(conn: Connection, endpoint_id: int, now: datetime, reason: str) -> None:
    """Disable an endpoint and give up its waiting deliveries (the log says why)."""
    e = _endpoints
    conn.execute(
        update(e)
        .where(e.c.id == endpoint_id)
        .values(enabled=False, disabled_at=now, disabled_reason=reason[:300], updated_at=now)
    )
    fail_waiting(conn, [endpoint_id], "not sent: the endpoint was disabled")


def fail_waiting(conn: Connection, endpoint_ids: Sequence[int], error: str) -> None:
    """Give up the pending deliveries of these endpoints."""
    d = _deliveries
    if endpoint_ids:
        conn.execute(
            update(d)
            .where(d.c.endpoint_id.in_(list(endpoint_ids)), d.c.status == DeliveryStatus.PENDING)
            .values(status=DeliveryStatus.FAILED, next_attempt_at=None, last_error=error)
        )


def disabled_among(conn: Connection, endpoint_ids: Iterable[int]) -> list[int]:
    ids = sorted(set(endpoint_ids))
    if not ids:
        return []
    e = _endpoints
    return list(conn.scalars(select(e.c.id).where(e.c.id.in_(ids), e.c.enabled.is_(False))))


def release_stale_claims(conn: Connection, claimed_before: datetime, now: datetime) -> int:
    """Put back deliveries whose worker stopped mid-request (claimed before the cutoff);
    they are posted again with the same ``webhook-id``."""
    d = _deliveries
    result = conn.execute(
        update(d)
        .where(d.c.status == DeliveryStatus.DELIVERING, d.c.claimed_at < claimed_before)
        .values(
            status=DeliveryStatus.PENDING,
            claimed_by=None,
            claimed_at=None,
            next_attempt_at=now,
            last_error="the worker stopped during the request",
        )
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def purge_log(conn: Connection, before: datetime) -> int:
    """Delete finished deliveries older than the cutoff, and events left without any."""
    d, ev = _deliveries, _events
    result = conn.execute(
        delete(d).where(
            d.c.status.in_([DeliveryStatus.DELIVERED, DeliveryStatus.FAILED]),
            d.c.created_at < before,
        )
    )
    conn.execute(
        delete(ev).where(ev.c.created_at < before, ~exists().where(d.c.event_id == ev.c.id))
    )
    return int(cast(CursorResult[Any], result).rowcount or 0)


def has_due(conn: Connection, now: datetime) -> bool:
    """Whether some delivery of an enabled endpoint is due (a read, no lock)."""
    d, e = _deliveries, _endpoints
    found = conn.scalar(
        select(
            exists().where(
                d.c.status == DeliveryStatus.PENDING,
                d.c.next_attempt_at <= now,
                e.c.id == d.c.endpoint_id,
                e.c.enabled.is_(True),
            )
        )
    )
    return found is True


# ------------------------------------------------------------------ the pages


def visible_endpoints(session: Session, user: User) -> list[WebhookEndpoint]:
    """The user's own endpoints, and their organisation's if they are an admin."""
    mine = and_(WebhookEndpoint.scope == WebhookScope.USER, WebhookEndpoint.user_id == user.id)
    clause = mine
    if user.is_admin:
        clause = or_(
            mine,
            and_(
                WebhookEndpoint.scope == WebhookScope.ORGANISATION,
                WebhookEndpoint.organisation_id == user.organisation_id,
            ),
        )
    return list(session.scalars(select(WebhookEndpoint).where(clause).order_by(WebhookEndpoint.id)))


def get_endpoint(session: Session, endpoint_id: int) -> WebhookEndpoint | None:
    return session.get(WebhookEndpoint, endpoint_id)


def add(session: Session, row: object) -> None:
    session.add(row)
    session.flush()


def delete_endpoint(session: Session, endpoint: WebhookEndpoint) -> None:
    session.delete(endpoint)
    session.flush()


def delivery_page(
    session: Session, endpoint_id: int, before: tuple[datetime, int] | None, limit: int
) -> list[Any]:
    """An endpoint's deliveries, newest first (keyset pagination on created_at, id)."""
    d, ev = _deliveries, _events
    query = (
        select(d, ev.c.uid, ev.c.type)
        .join(ev, ev.c.id == d.c.event_id)
        .where(d.c.endpoint_id == endpoint_id)
    )
    if before is not None:
        query = query.where(tuple_(d.c.created_at, d.c.id) < before)
    return list(session.execute(query.order_by(d.c.created_at.desc(), d.c.id.desc()).limit(limit)))
