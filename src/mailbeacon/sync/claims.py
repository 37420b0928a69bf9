"""The sync worker's claims: one worker per mailbox at a time, one per Sent-folder copy.

Both are leases in the database, so they work alike on SQLite and PostgreSQL
and across processes and machines: a claim is one ``UPDATE`` that succeeds
only if the row is free (no owner, or a lease that ran out) or already ours.
PostgreSQL re-checks that condition on a row another transaction just changed
(READ COMMITTED), and SQLite runs the statement under its single write lock,
so two workers never both succeed. A worker that dies simply stops renewing,
and its lease runs out. Progress is written only while the lease is still held
(:func:`hold_lease` in the same transaction), so a worker that lost its lease
while stalled cannot write over its successor's work.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, Table, and_, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailbeacon.models import (
    MailboxConnection,
    SentCopyStatus,
    SentFolderCopy,
    SyncState,
)

_states = cast(Table, SyncState.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_sent = cast(Table, SentFolderCopy.__table__)


@dataclass(frozen=True, slots=True)
class SentJob:
    id: int
    message_id: int
    mailbox_id: int
    attempts: int


def _rowcount(result: Any) -> int:
    return int(cast(CursorResult[Any], result).rowcount or 0)


def _insert(session: Session) -> Any:
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


# ------------------------------------------------------------------ mailboxes


def syncable_mailbox_ids(session: Session) -> list[int]:
    """Mailboxes with IMAP settings (the demo mailbox has none)."""
    return list(
        session.scalars(
            select(_mailboxes.c.id)
            .where(_mailboxes.c.imap_host != "", _mailboxes.c.is_demo.is_(False))
            .order_by(_mailboxes.c.id)
        )
    )


def mailboxes_with_state(session: Session, mailbox_ids: list[int]) -> set[int]:
    if not mailbox_ids:
        return set()
    return set(
        session.scalars(
            select(_states.c.mailbox_connection_id).where(
                _states.c.mailbox_connection_id.in_(mailbox_ids)
            )
        )
    )


def ensure_states(session: Session, mailbox_ids: list[int], now: datetime) -> None:
    """A sync state for each mailbox that has none yet."""
    if mailbox_ids:
        session.execute(
            _insert(session)(_states)
            .values(
                [
                    {
                        "mailbox_connection_id": m,
                        "account_key": "",
                        "last_uid": 0,
                        "first_sync_done": False,
                        "stored_count": 0,
                        "last_error": "",
                        "failures": 0,
                        "updated_at": now,
                    }
                    for m in mailbox_ids
                ]
            )
            .on_conflict_do_nothing(index_elements=["mailbox_connection_id"])
        )


def due_mailbox_ids(session: Session, now: datetime) -> list[int]:
    """Mailboxes whose sync is due (its back-off over, or its settings just saved) and
    whose lease is free."""
    free = or_(_states.c.lease_until.is_(None), _states.c.lease_until < now)
    due = or_(
        _states.c.next_attempt_at.is_(None),
        _states.c.next_attempt_at <= now,
        _states.c.settings_seen_at.is_(None),
        _mailboxes.c.updated_at > _states.c.settings_seen_at,
    )
    return list(
        session.scalars(
            select(_states.c.mailbox_connection_id)
            .join(_mailboxes, _mailboxes.c.id == _states.c.mailbox_connection_id)
            .where(
                _mailboxes.c.imap_host != "",
                _mailboxes.c.is_demo.is_(False),
                free,
                due,
            )
            .order_by(_states.c.next_attempt_at.is_(None).desc(), _states.c.next_attempt_at)
        )
    )


def take_lease(
    session: Session, mailbox_id: int, owner: str, now: datetime, seconds: float
) -> bool:
    """Claim the mailbox for ``seconds``; False if another worker holds it."""
    result = session.execute(
        update(_states)
        .where(
            _states.c.mailbox_connection_id == mailbox_id,
            or_(
                _states.c.lease_owner.is_(None),
                _states.c.lease_until.is_(None),
                _states.c.lease_until < now,
                _states.c.lease_owner == owner,
            ),
        )
        .values(lease_owner=owner, lease_until=now + timedelta(seconds=seconds))
    )
    return _rowcount(result) == 1


def hold_lease(session: Session, mailbox_id: int, owner: str, until: datetime) -> bool:
    """Extend our lease, in the caller's transaction; False if it is no longer ours."""
    result = session.execute(
        update(_states)
        .where(_states.c.mailbox_connection_id == mailbox_id, _states.c.lease_owner == owner)
        .values(lease_until=until)
    )
    return _rowcount(result) == 1


def release_lease(session: Session, mailbox_id: int, owner: str) -> None:
    session.execute(
        update(_states)
        .where(_states.c.mailbox_connection_id == mailbox_id, _states.c.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
    )


def state_of(session: Session, mailbox_id: int) -> SyncState | None:
    return session.scalars(
        select(SyncState).where(SyncState.mailbox_connection_id == mailbox_id)
    ).one_or_none()


def update_state(session: Session, mailbox_id: int, owner: str, **values: Any) -> bool:
    """Write sync progress or an outcome, only while ``owner`` holds the lease."""
    result = session.execute(
        update(_states)
        .where(_states.c.mailbox_connection_id == mailbox_id, _states.c.lease_owner == owner)
        .values(**values)
    )
    return _rowcount(result) == 1


# ------------------------------------------------------------------ Sent-folder copies


def has_due_sent_copies(session: Session, now: datetime) -> bool:
    return (
        session.scalar(
            select(_sent.c.id)
            .where(
                _sent.c.status == SentCopyStatus.PENDING,
                or_(_sent.c.next_attempt_at.is_(None), _sent.c.next_attempt_at <= now),
                or_(_sent.c.claimed_until.is_(None), _sent.c.claimed_until < now),
            )
            .limit(1)
        )
        is not None
    )


def claim_sent_copies(
    session: Session, owner: str, now: datetime, seconds: float, limit: int
) -> list[SentJob]:
    """Claim up to ``limit`` due Sent-folder copies for ``seconds``, oldest first."""
    claimable = and_(
        _sent.c.status == SentCopyStatus.PENDING,
        or_(_sent.c.next_attempt_at.is_(None), _sent.c.next_attempt_at <= now),
        or_(_sent.c.claimed_until.is_(None), _sent.c.claimed_until < now),
    )
    due = select(_sent.c.id).where(claimable).order_by(_sent.c.id).limit(limit)
    ids = list(session.scalars(due))
    if not ids:
        return []
    rows = session.execute(
        update(_sent)
        .where(_sent.c.id.in_(ids), claimable)
        .values(
            claimed_by=owner,
            claimed_until=now + timedelta(seconds=seconds),
            attempts=_sent.c.attempts + 1,
        )
        .returning(_sent.c.id, _sent.c.message_id, _sent.c.mailbox_connection_id, _sent.c.attempts)
    )
    return sorted((SentJob(*row) for row in rows), key=lambda j: j.id)


def settle_sent_copy(session: Session, job_id: int, owner: str, **values: Any) -> bool:
    """Write a Sent-folder copy's outcome while it is still ours; the claim ends."""
    result = session.execute(
        update(_sent)
        .where(_sent.c.id == job_id, _sent.c.claimed_by == owner)
        .values(claimed_by=None, claimed_until=None, **values)
    )
    return _rowcount(result) == 1
