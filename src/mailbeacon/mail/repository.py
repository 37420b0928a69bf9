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
    bindparam,
    exists,
    func,
    insert,
    or_,
    select,
    text,
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
from mailbeacon.models.base import UTCDateTime

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


# The two statements every copy goes through are written out in SQL: built with
# the expression language they cost five times as much Python per execution
# (statement construction and cache keys), which on a fast SMTP server was most of
# the time spent per copy. The columns and states are the ones the models declare.
# Served in due order, which the (status, next_attempt_at) index yields as it is:
# no sort of the whole queue per claim. Planning sets next_attempt_at, so new copies
# queue in the order they were planned.
_CLAIM_SQLITE = text(
    "UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit)"
    " AND status = 'queued'"
    " RETURNING id, message_id, address, html_body, text_body, attempts"
).bindparams(bindparam("now", type_=UTCDateTime()))
# A locking CTE runs exactly once. Written as "id IN (subquery)", PostgreSQL may
# rescan the subquery, and each rescan skips the rows the earlier ones locked: the
# UPDATE would then claim more rows than the LIMIT.
_CLAIM_POSTGRESQL = text(
    "WITH due AS (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
    " UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = recipient_copies.attempts + 1"
    " FROM due WHERE recipient_copies.id = due.id AND recipient_copies.status = 'queued'"
    " RETURNING recipient_copies.id, recipient_copies.message_id, recipient_copies.address,"
    " recipient_copies.html_body, recipient_copies.text_body, recipient_copies.attempts"
).bindparams(bindparam("now", type_=UTCDateTime()))


def claim_copies(conn: Connection, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
    """Move up to ``limit`` due copies from queued to sending, for this worker.

    On SQLite the caller must hold the write lock (``sqlite_immediate``).
    """
    if limit <= 0:
        return []
    stmt = _CLAIM_POSTGRESQL if conn.dialect.name == "postgresql" else _CLAIM_SQLITE
    rows = conn.execute(stmt, {"worker": worker_id, "now": now, "limit": limit})
    claimed = [ClaimedCopy(*row) for row in rows]
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


_SETTLE_SENT = text(
    "UPDATE recipient_copies"
    " SET status = 'sent', sent_at = :now, next_attempt_at = NULL, smtp_reply = :reply"
    " WHERE id = :copy_id AND claimed_by = :worker AND status IN ('sending', 'unknown')"
).bindparams(bindparam("now", type_=UTCDateTime()))
_SETTLE_ENDED = text(
    "UPDATE recipient_copies SET status = :status, smtp_reply = :reply"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'sending'"
)
_SETTLE_RETRY = text(
    "UPDATE recipient_copies"
    " SET status = 'queued', claimed_by = NULL, claimed_at = NULL, next_attempt_at = :next,"
    " smtp_reply = :reply, attempts = attempts - :giveback"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'sending'"
).bindparams(bindparam("next", type_=UTCDateTime()))
_MESSAGE_STARTED = text(
    "UPDATE messages SET sent_at = :now WHERE id = :message_id AND sent_at IS NULL"
).bindparams(bindparam("now", type_=UTCDateTime()))


def settle_copies(
    conn: Connection,
    worker_id: str,
    now: datetime,
    settlements: Sequence[Settlement],
    *,
    messages_started: set[int] | None = None,
) -> None:
    """Write the outcome of each claimed copy; a message's first sent copy dates it.

    Only copies still claimed by this worker change. A copy another worker marked
    ``unknown`` while we were sending (our presence looked lost) still becomes
    ``sent`` when we know it was: the truth is better than the doubt.
    ``messages_started`` holds the messages already known to be dated; the caller
    keeps it to spare the statement, and it is updated here. Send requests are
    closed separately (:func:`complete_outbox_entries`).
    """
    sent, ended, retry = [], [], []
    for s in settlements:
        row: dict[str, object] = {
            "copy_id": s.copy_id,
            "worker": worker_id,
            "reply": s.reply[:REPLY_MAX],
        }
        if s.status == CopyStatus.SENT:
            sent.append(row | {"now": now})
        elif s.status == CopyStatus.QUEUED:
            retry.append(row | {"next": s.next_attempt_at or now, "giveback": int(s.release)})
        else:
            ended.append(row | {"status": str(s.status)})
    if sent:
        conn.execute(_SETTLE_SENT, sent)
        started = {s.message_id for s in settlements if s.status == CopyStatus.SENT}
        started -= messages_started or set()
        if started:
            conn.execute(_MESSAGE_STARTED, [{"now": now, "message_id": m} for m in started])
            if messages_started is not None:
                messages_started.update(started)
    if ended:
        conn.execute(_SETTLE_ENDED, ended)
    if retry:
        conn.execute(_SETTLE_RETRY, retry)


def complete_outbox_entries(
    conn: Connection, message_ids: Iterable[int] | None, now: datetime
) -> None:
    """Close the send request of each message none of whose copies is pending any more.

    ``None`` checks every open request (the periodic sweep).
    """
    pending = exists().where(
        _copies.c.message_id == _outbox.c.message_id,
        _copies.c.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]),
    )
    stmt = update(_outbox).where(_outbox.c.completed_at.is_(None), ~pending)
    if message_ids is not None:
        ids = list(set(message_ids))
        if not ids:
            return
        stmt = stmt.where(_outbox.c.message_id.in_(ids))
    conn.execute(stmt.values(completed_at=now))


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
    complete_outbox_entries(conn, None, now)
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
