"""Every query of the mail domain: planning a send, claiming and settling copies.

The worker's queries use SQLAlchemy Core on a plain connection: they run once per
copy on the send path, where the ORM's bookkeeping would cost more than the SMTP
transaction they guard.

Claiming is what keeps two workers from sending the same copy. On PostgreSQL the
due rows are picked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers take
disjoint sets without waiting on each other. On SQLite the caller runs the claim
in a ``BEGIN IMMEDIATE`` transaction, which holds the database's single write lock
from the start, and the ``UPDATE`` re-checks ``status = 'queued'``; no other
writer can slip in between choosing and claiming.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailbeacon.mail.addresses import Address
from mailbeacon.models import (
    Contact,
    CopyStatus,
    DemoMessage,
    MailboxConnection,
    Message,
    OutboxEntry,
    RecipientCopy,
)

# ORM classes declare __table__ as a FromClause; these are plain tables.
_copies = cast(Table, RecipientCopy.__table__)
_messages = cast(Table, Message.__table__)
_outbox = cast(Table, OutboxEntry.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_contacts = cast(Table, Contact.__table__)
_demo = cast(Table, DemoMessage.__table__)

REPLY_MAX = 1000  # recipient_copies.smtp_reply

# Advisory-lock class id for "an outbox worker with this id is alive" ("mb").
_PRESENCE_LOCK_CLASS = 0x6D62


# ------------------------------------------------------------------ planning


def mailbox_for_user(session: Session, user_id: int) -> MailboxConnection | None:
    return session.scalars(
        select(MailboxConnection).where(MailboxConnection.user_id == user_id)
    ).one_or_none()


def ensure_contacts(
    session: Session, organisation_id: int, addresses: Sequence[Address]
) -> dict[str, int]:
    """Contact ids by lower-cased address, creating the missing ones.

    ``ON CONFLICT DO NOTHING`` makes two sends racing to create the same contact
    both succeed; the existing row (and its name) wins.
    """
    if not addresses:
        return {}
    rows = {
        a.key: {"organisation_id": organisation_id, "email": a.key, "name": a.name[:200]}
        for a in addresses
    }
    dialect = session.get_bind().dialect.name
    stmt = postgresql.insert(_contacts) if dialect == "postgresql" else sqlite.insert(_contacts)
    session.execute(
        stmt.on_conflict_do_nothing(index_elements=["organisation_id", "email"]),
        list(rows.values()),
    )
    found = session.execute(
        select(_contacts.c.email, _contacts.c.id).where(
            _contacts.c.organisation_id == organisation_id, _contacts.c.email.in_(list(rows))
        )
    )
    return {email: contact_id for email, contact_id in found}


def copy_of_user(session: Session, user_id: int, copy_id: int) -> RecipientCopy | None:
    """The copy if it belongs to one of the user's messages; others' copies do not exist."""
    return session.scalars(
        select(RecipientCopy)
        .join(Message, Message.id == RecipientCopy.message_id)
        .where(RecipientCopy.id == copy_id, Message.user_id == user_id)
    ).one_or_none()


def reopen_outbox_entry(session: Session, message_id: int, now: datetime) -> None:
    """Make sure the message has a pending outbox entry again (after a user's retry)."""
    result = session.execute(
        update(_outbox).where(_outbox.c.message_id == message_id).values(completed_at=None)
    )
    reopened = cast(CursorResult[Any], result).rowcount
    if not reopened:
        session.execute(insert(_outbox).values(message_id=message_id, created_at=now))


# ------------------------------------------------------------------ the worker


@dataclass(frozen=True, slots=True)
class ClaimedCopy:
    id: int
    message_id: int
    address: str
    html_body: str | None
    text_body: str | None
    attempts: int


@dataclass(frozen=True, slots=True)
class SendContext:
    """What every copy of one message shares: headers and the mailbox to send through."""

    message_id: int
    subject: str
    sender_name: str
    sender_address: str
    to_header: str
    cc_header: str
    message_id_header: str
    created_at: datetime
    mailbox_id: int | None
    smtp_host: str
    smtp_port: int
    smtp_security: str
    smtp_username: str
    smtp_password_encrypted: str


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one claimed copy ends this attempt, to be written by :func:`settle_copies`."""

    copy_id: int
    message_id: int
    status: CopyStatus  # sent, failed, unknown, or queued (retry later)
    reply: str
    next_attempt_at: datetime | None = None
    release: bool = False  # never tried (worker stopping): give the attempt back


def claim_copies(conn: Connection, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
    """Move up to ``limit`` due copies from queued to sending, for this worker.

    On SQLite the caller must hold the write lock (``sqlite_immediate``).
    """
    if limit <= 0:
        return []
    due = (
        select(_copies.c.id)
        .where(
            _copies.c.status == CopyStatus.QUEUED,
            or_(_copies.c.next_attempt_at.is_(None), _copies.c.next_attempt_at <= now),
        )
        .order_by(_copies.c.id)
        .limit(limit)
    )
    if conn.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(_copies)
        .where(_copies.c.id.in_(due.scalar_subquery()), _copies.c.status == CopyStatus.QUEUED)
        .values(
            status=CopyStatus.SENDING,
            claimed_by=worker_id,
            claimed_at=now,
            attempts=_copies.c.attempts + 1,
        )
        .returning(
            _copies.c.id,
            _copies.c.message_id,
            _copies.c.address,
            _copies.c.html_body,
            _copies.c.text_body,
            _copies.c.attempts,
        )
    )
    claimed = [ClaimedCopy(*row) for row in conn.execute(stmt)]
    claimed.sort(key=lambda c: c.id)
    return claimed


def load_send_contexts(conn: Connection, message_ids: Iterable[int]) -> dict[int, SendContext]:
    ids = list(set(message_ids))
    if not ids:
        return {}
    m, mb = _messages, _mailboxes
    rows = conn.execute(
        select(
            m.c.id,
            m.c.subject,
            m.c.sender_name,
            m.c.sender_address,
            m.c.to_header,
            m.c.cc_header,
            m.c.message_id_header,
            m.c.created_at,
            mb.c.id,
            mb.c.smtp_host,
            mb.c.smtp_port,
            mb.c.smtp_security,
            mb.c.smtp_username,
            mb.c.smtp_password_encrypted,
        )
        .select_from(m.outerjoin(mb, mb.c.id == m.c.mailbox_connection_id))
        .where(m.c.id.in_(ids))
    )
    contexts = {}
    for row in rows:
        contexts[row[0]] = SendContext(
            message_id=row[0],
            subject=row[1],
            sender_name=row[2],
            sender_address=row[3],
            to_header=row[4],
            cc_header=row[5],
            message_id_header=row[6],
            created_at=row[7],
            mailbox_id=row[8],
            smtp_host=row[9] or "",
            smtp_port=row[10] or 0,
            smtp_security=row[11] or "",
            smtp_username=row[12] or "",
            smtp_password_encrypted=row[13] or "",
        )
    return contexts


def settle_copies(
    conn: Connection, worker_id: str, now: datetime, settlements: Sequence[Settlement]
) -> None:
    """Write the outcome of each claimed copy, and what follows for its message.

    Only copies still claimed by this worker change. A copy another worker marked
    ``unknown`` while we were sending (our presence looked lost) still becomes
    ``sent`` when we know it was: the truth is better than the doubt.
    """
    if not settlements:
        return
    mine = and_(_copies.c.id == bindparam("k_id"), _copies.c.claimed_by == worker_id)
    sent = [s for s in settlements if s.status == CopyStatus.SENT]
    if sent:
        conn.execute(
            update(_copies)
            .where(mine, _copies.c.status.in_([CopyStatus.SENDING, CopyStatus.UNKNOWN]))
            .values(
                status=CopyStatus.SENT,
                sent_at=now,
                next_attempt_at=None,
                smtp_reply=bindparam("v_reply"),
            ),
            [{"k_id": s.copy_id, "v_reply": s.reply[:REPLY_MAX]} for s in sent],
        )
        conn.execute(
            update(_messages)
            .where(_messages.c.id.in_({s.message_id for s in sent}), _messages.c.sent_at.is_(None))
            .values(sent_at=now)
        )
    ended = [s for s in settlements if s.status in (CopyStatus.FAILED, CopyStatus.UNKNOWN)]
    if ended:
        conn.execute(
            update(_copies)
            .where(mine, _copies.c.status == CopyStatus.SENDING)
            .values(status=bindparam("v_status"), smtp_reply=bindparam("v_reply")),
            [
                {"k_id": s.copy_id, "v_status": str(s.status), "v_reply": s.reply[:REPLY_MAX]}
                for s in ended
            ],
        )
    retry = [s for s in settlements if s.status == CopyStatus.QUEUED]
    if retry:
        conn.execute(
            update(_copies)
            .where(mine, _copies.c.status == CopyStatus.SENDING)
            .values(
                status=CopyStatus.QUEUED,
                claimed_by=None,
                claimed_at=None,
                next_attempt_at=bindparam("v_next"),
                smtp_reply=bindparam("v_reply"),
                attempts=_copies.c.attempts - bindparam("v_giveback"),
            ),
            [
                {
                    "k_id": s.copy_id,
                    "v_next": s.next_attempt_at,
                    "v_reply": s.reply[:REPLY_MAX],
                    "v_giveback": 1 if s.release else 0,
                }
                for s in retry
            ],
        )
    complete_outbox_entries(conn, {s.message_id for s in settlements}, now)


def complete_outbox_entries(conn: Connection, message_ids: Iterable[int], now: datetime) -> None:
    """Close the send request of each message none of whose copies is pending any more."""
    ids = list(set(message_ids))
    if not ids:
        return
    pending = exists().where(
        _copies.c.message_id == _outbox.c.message_id,
        _copies.c.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]),
    )
    conn.execute(
        update(_outbox)
        .where(_outbox.c.message_id.in_(ids), _outbox.c.completed_at.is_(None), ~pending)
        .values(completed_at=now)
    )


def sending_workers(conn: Connection, exclude: str) -> list[str]:
    """Ids of the workers that hold copies in ``sending``, other than ``exclude``."""
    return [
        w
        for (w,) in conn.execute(
            select(_copies.c.claimed_by)
            .distinct()
            .where(_copies.c.status == CopyStatus.SENDING, _copies.c.claimed_by != exclude)
        )
        if w
    ]


def mark_orphans_unknown(
    conn: Connection,
    dead_workers: Sequence[str],
    lease_cutoff: datetime,
    now: datetime,
    reply: str,
) -> int:
    """Copies in ``sending`` of dead workers, or claimed before the cutoff, become unknown."""
    orphan = _copies.c.claimed_at < lease_cutoff
    if dead_workers:
        orphan = or_(orphan, _copies.c.claimed_by.in_(list(dead_workers)))
    rows = conn.execute(
        update(_copies)
        .where(_copies.c.status == CopyStatus.SENDING, orphan)
        .values(status=CopyStatus.UNKNOWN, smtp_reply=reply[:REPLY_MAX])
        .returning(_copies.c.message_id)
    ).all()
    complete_outbox_entries(conn, {r[0] for r in rows}, now)
    return len(rows)


def presence_lock_key(worker_id: str) -> int:
    """The advisory-lock object id that stands for a worker id (a signed 32-bit CRC)."""
    crc = zlib.crc32(worker_id.encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


def hold_presence_lock(conn: Connection, worker_id: str) -> bool:
    """PostgreSQL: take the session-level lock that says "this worker is alive"."""
    return bool(
        conn.execute(
            select(func.pg_try_advisory_lock(_PRESENCE_LOCK_CLASS, presence_lock_key(worker_id)))
        ).scalar()
    )


def presence_lock_is_free(conn: Connection, worker_id: str) -> bool:
    """PostgreSQL: True if no session holds the worker's presence lock (it is gone).

    The transaction-level try-lock is released when the caller's transaction ends.
    """
    return bool(
        conn.execute(
            select(
                func.pg_try_advisory_xact_lock(_PRESENCE_LOCK_CLASS, presence_lock_key(worker_id))
            )
        ).scalar()
    )


def has_due_copies(conn: Connection, now: datetime) -> bool:
    return (
        conn.execute(
            select(
                exists().where(
                    _copies.c.status == CopyStatus.QUEUED,
                    or_(_copies.c.next_attempt_at.is_(None), _copies.c.next_attempt_at <= now),
                )
            )
        ).scalar()
        is True
    )


# ------------------------------------------------------------------ demo mailbox


def store_demo_message(
    conn: Connection, mail_from: str, recipients: Sequence[str], raw: bytes, now: datetime
) -> None:
    """One row per envelope recipient, as the Demo inbox lists them."""
    conn.execute(
        insert(_demo),
        [
            {"mail_from": mail_from[:320], "recipient": r[:320], "raw": raw, "received_at": now}
            for r in recipients
        ],
    )


def lease_cutoff(now: datetime, lease_seconds: float) -> datetime:
    return now - timedelta(seconds=lease_seconds)
