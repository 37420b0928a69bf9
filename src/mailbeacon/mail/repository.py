"""Queries of the mail domain for planning a send and for the Demo inbox.

The outbox worker's queries (claiming, settling, presence) are in ``queue.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    CursorResult,
    LargeBinary,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from mailbeacon.kit.addresses import Address
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
_outbox = cast(Table, OutboxEntry.__table__)
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


def requeue_unknown_copy(session: Session, copy_id: int, now: datetime, reply: str) -> bool:
    """Queue an ``unknown`` copy again; False if it is not ``unknown`` (any more)."""
    result = session.execute(
        update(_copies)
        .where(_copies.c.id == copy_id, _copies.c.status == CopyStatus.UNKNOWN)
        .values(
            status=CopyStatus.QUEUED,
            attempts=0,
            next_attempt_at=now,
            claimed_by=None,
            claimed_at=None,
            smtp_reply=reply[:REPLY_MAX],
        )
    )
    return cast(CursorResult[Any], result).rowcount == 1


def reopen_outbox_entry(session: Session, message_id: int, now: datetime) -> None:
    """Make sure the message has a pending outbox entry again (after a user's retry)."""
    result = session.execute(
        update(_outbox).where(_outbox.c.message_id == message_id).values(completed_at=None)
    )
    reopened = cast(CursorResult[Any], result).rowcount
    if not reopened:
        session.execute(insert(_outbox).values(message_id=message_id, created_at=now))


# ------------------------------------------------------------------ demo mailbox


def demo_deliveries(session: Session, user_id: int, limit: int) -> list[DemoMessage]:
    """The newest demo deliveries of this user's messages.

    Filtered before the limit, or other users' mail would push this user's out of
    the page. A delivery belongs to a message of the user sent to its recipient
    whose Message-ID its raw bytes contain; the page then checks the parsed header.
    """
    header = Message.message_id_header
    if session.get_bind().dialect.name == "postgresql":
        # bytea has no strpos; its escape form keeps printable ASCII (a Message-ID) as is.
        contains = func.strpos(func.encode(DemoMessage.raw, "escape"), header) > 0
    else:
        contains = func.instr(DemoMessage.raw, sql_cast(header, LargeBinary)) > 0
    owned = (
        select(Message.id)
        .join(RecipientCopy, RecipientCopy.message_id == Message.id)
        .where(
            Message.user_id == user_id,
            Message.message_id_header != "",
            func.lower(RecipientCopy.address) == func.lower(DemoMessage.recipient),
            contains,
        )
        .exists()
    )
    return list(
        session.scalars(
            select(DemoMessage)
            .where(owned)
            .order_by(DemoMessage.received_at.desc(), DemoMessage.id.desc())
            .limit(limit)
        )
    )


def own_message_ids(session: Session, user_id: int, header_ids: set[str]) -> dict[str, int]:
    """Which Message-ID headers belong to this user's messages (header -> message id)."""
    if not header_ids:
        return {}
    rows = session.execute(
        select(Message.message_id_header, Message.id).where(
            Message.user_id == user_id, Message.message_id_header.in_(sorted(header_ids))
        )
    )
    return {header: message_id for header, message_id in rows}


def store_demo_message(
    session: Session, mail_from: str, recipients: Sequence[str], raw: bytes, now: datetime
) -> None:
    """One row per envelope recipient, as the Demo inbox lists them."""
    session.execute(
        insert(_demo),
        [
            {"mail_from": mail_from[:320], "recipient": r[:320], "raw": raw, "received_at": now}
            for r in recipients
        ],
    )
