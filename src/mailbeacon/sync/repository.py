"""Queries of incoming mail: matching it to what a user sent, and storing what matched.

Every lookup is scoped to one user: mail in Sally's mailbox only ever matches
Sally's emails. The claims of the sync worker (leases on mailboxes, Sent-folder
jobs) are in ``claims.py``.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    String,
    Table,
    and_,
    any_,
    case,
    func,
    literal,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from mailbeacon.models import (
    CopyStatus,
    MailboxConnection,
    Message,
    ReceivedMail,
    RecipientCopy,
    SyncState,
    User,
)

_messages = cast(Table, Message.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_received = cast(Table, ReceivedMail.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_users = cast(Table, User.__table__)

# Candidates looked at when mail is matched by its sender's address alone.
RECENT_LIMIT = 20


@dataclass(frozen=True, slots=True)
class SentRef:
    """One of the user's sent emails, as matching needs it."""

    id: int
    subject: str


@dataclass(frozen=True, slots=True)
class CopyRef:
    id: int
    message_id: int
    address: str  # lower-cased
    status: str


@dataclass(frozen=True, slots=True)
class Owner:
    """Whose mailbox the mail is in, and the addresses that are the user's own."""

    user_id: int
    addresses: frozenset[str]


def owner(session: Session, user_id: int) -> Owner:
    """The user and their own addresses (sign-in address, sender address)."""
    row = session.execute(
        select(_users.c.email, _mailboxes.c.sender_address)
        .select_from(_users)
        .outerjoin(_mailboxes, _mailboxes.c.user_id == _users.c.id)
        .where(_users.c.id == user_id)
    ).first()
    addresses = {a.lower() for a in (row or ()) if a}
    return Owner(user_id, frozenset(addresses))


def _one_of(session: Session, column: Any, values: Collection[str]) -> ColumnElement[bool]:
    """``column`` is one of ``values``, sent as one parameter however many there are.

    Screening asks about a thousand ids per batch: as an IN list, rendering and
    planning a thousand parameters cost more than the lookup itself. PostgreSQL
    takes an array (``= ANY``), SQLite a JSON array it unpacks (``json_each``).
    """
    ordered = sorted(set(values))
    if session.get_bind().dialect.name == "postgresql":
        return cast(ColumnElement[bool], column == any_(literal(ordered, ARRAY(String))))
    unpacked = func.json_each(literal(json.dumps(ordered))).table_valued("value")
    return cast(ColumnElement[bool], column.in_(select(unpacked.c.value)))


def sent_by_header_ids(session: Session, user_id: int, ids: Collection[str]) -> dict[str, SentRef]:
    """The user's sent emails whose Message-ID is among ``ids`` (by that header)."""
    if not ids:
        return {}
    rows = session.execute(
        select(_messages.c.message_id_header, _messages.c.id, _messages.c.subject).where(
            _one_of(session, _messages.c.message_id_header, ids),
            _messages.c.user_id == user_id,
            _messages.c.is_preview.is_(False),
        )
    )
    return {header: SentRef(mid, subject) for header, mid, subject in rows}


def copies_of(session: Session, message_id: int) -> list[CopyRef]:
    rows = session.execute(
        select(_copies.c.id, _copies.c.message_id, _copies.c.address, _copies.c.status)
        .where(_copies.c.message_id == message_id)
        .order_by(_copies.c.id)
    )
    return [CopyRef(cid, mid, address.lower(), status) for cid, mid, address, status in rows]


def recent_copies_to(
    session: Session, user_id: int, addresses: Collection[str], since: datetime, until: datetime
) -> list[tuple[CopyRef, SentRef]]:
    """Copies of the user's emails sent to any of ``addresses`` between ``since`` and
    ``until``, newest first (at most ``RECENT_LIMIT`` per call)."""
    if not addresses:
        return []
    rows = session.execute(
        select(
            _copies.c.id,
            _copies.c.message_id,
            _copies.c.address,
            _copies.c.status,
            _messages.c.subject,
        )
        .join(_messages, _messages.c.id == _copies.c.message_id)
        .where(
            _messages.c.user_id == user_id,
            _messages.c.is_preview.is_(False),
            _messages.c.created_at >= since,
            _messages.c.created_at <= until,
            func.lower(_copies.c.address).in_(sorted({a.lower() for a in addresses})),
            _copies.c.status.in_([CopyStatus.SENT, CopyStatus.UNKNOWN, CopyStatus.BOUNCED]),
        )
        .order_by(_messages.c.created_at.desc(), _copies.c.id.desc())
        .limit(RECENT_LIMIT)
    )
    return [
        (CopyRef(cid, mid, address.lower(), status), SentRef(mid, subject))
        for cid, mid, address, status, subject in rows
    ]


def recent_recipients(
    session: Session, user_id: int, addresses: Collection[str], since: datetime
) -> set[str]:
    """Which of ``addresses`` (lower-cased) the user sent email to since ``since``."""
    if not addresses:
        return set()
    rows = session.execute(
        select(func.lower(_copies.c.address))
        .distinct()
        .join(_messages, _messages.c.id == _copies.c.message_id)
        .where(
            _messages.c.user_id == user_id,
            _messages.c.created_at >= since,
            _one_of(session, func.lower(_copies.c.address), addresses),
        )
    )
    return {address for (address,) in rows}


def insert_received(session: Session, values: dict[str, Any]) -> int | None:
    """Store one piece of incoming mail; None if this user already has it (same key)."""
    insert_ = (
        postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
    )
    stmt = (
        insert_(_received)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["user_id", "dedupe_key"])
        .returning(_received.c.id)
    )
    found = session.execute(stmt).scalar()
    return int(found) if found is not None else None


def record_reply(session: Session, message_id: int, copy_id: int | None, at: datetime) -> None:
    """Count a person's reply on the email and, if it came from a recipient, on the copy."""
    session.execute(
        update(_messages)
        .where(_messages.c.id == message_id)
        .values(
            reply_count=_messages.c.reply_count + 1,
            last_reply_at=case(
                (
                    and_(
                        _messages.c.last_reply_at.is_not(None),
                        _messages.c.last_reply_at > at,
                    ),
                    _messages.c.last_reply_at,
                ),
                else_=at,
            ),
        )
    )
    if copy_id is not None:
        session.execute(
            update(_copies)
            .where(_copies.c.id == copy_id)
            .values(
                reply_count=_copies.c.reply_count + 1,
                replied_at=func.coalesce(_copies.c.replied_at, at),
            )
        )


def record_auto_reply(session: Session, copy_id: int, at: datetime) -> None:
    session.execute(
        update(_copies)
        .where(_copies.c.id == copy_id)
        .values(auto_replied_at=func.coalesce(_copies.c.auto_replied_at, at))
    )


def record_bounce(
    session: Session, copy_ids: Sequence[int], at: datetime, status: str, diagnostic: str
) -> None:
    """A delivered copy becomes ``bounced``; a copy in another state keeps it (a bounce
    never turns a failed or queued copy into something it was not)."""
    if not copy_ids:
        return
    session.execute(
        update(_copies)
        .where(
            _copies.c.id.in_(list(copy_ids)),
            _copies.c.status.in_([CopyStatus.SENT, CopyStatus.UNKNOWN, CopyStatus.BOUNCED]),
        )
        .values(
            status=CopyStatus.BOUNCED,
            bounced_at=func.coalesce(_copies.c.bounced_at, at),
            bounce_status=status[:32],
            bounce_diagnostic=diagnostic[:500],
        )
    )


def sent_header(session: Session, message_id: int) -> tuple[str, datetime | None] | None:
    """A sent email's Message-ID header and when it went out (None if it is gone)."""
    row = session.execute(
        select(_messages.c.message_id_header, _messages.c.sent_at, _messages.c.created_at).where(
            _messages.c.id == message_id
        )
    ).first()
    if row is None:
        return None
    return row[0], row[1] or row[2]


def sync_health(conn: Connection) -> tuple[int, int, datetime | None]:
    """Mailboxes whose last sync succeeded, those whose last one failed, and the latest
    success of any (for the metrics)."""
    states = cast(Table, SyncState.__table__)
    failing = case((states.c.failures > 0, 1), else_=0)
    row = conn.execute(
        select(
            func.count(states.c.id),
            func.coalesce(func.sum(failing), 0),
            func.max(states.c.last_success_at),
        ).select_from(states.join(_mailboxes, _mailboxes.c.id == states.c.mailbox_connection_id))
    ).one()
    total, failed, last_success = int(row[0]), int(row[1]), row[2]
    return total - failed, failed, last_success
