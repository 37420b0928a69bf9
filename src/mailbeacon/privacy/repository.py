"""Every query of the privacy domain. Nothing here commits.

A contact belongs to an organisation; what was sent to it belongs to the users of
that organisation. "The contact's copies" are the copies of the organisation's
emails planned for the contact (or, for copies made without a contact, sent to
its address).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Table,
    and_,
    delete,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    text,
    tuple_,
    union_all,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, Integer, String, Text

from mailbeacon.db import in_list, json_rows, json_rows_value, list_value
from mailbeacon.models import (
    HUMAN_SOURCE_OPENS,
    AnonymousHit,
    AuditEntry,
    ConsentRecord,
    Contact,
    DemoMessage,
    ErasedAddress,
    LinkClickStat,
    MailboxConnection,
    Message,
    MessageLink,
    Notification,
    NotificationKind,
    Organisation,
    ReceivedMail,
    RecipientCopy,
    TrackingEvent,
    User,
)

_copies = cast(Table, RecipientCopy.__table__)
_messages = cast(Table, Message.__table__)
_events = cast(Table, TrackingEvent.__table__)
_users = cast(Table, User.__table__)
_orgs = cast(Table, Organisation.__table__)
_contacts = cast(Table, Contact.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_links = cast(Table, MessageLink.__table__)
_link_stats = cast(Table, LinkClickStat.__table__)
_notifications = cast(Table, Notification.__table__)
_received = cast(Table, ReceivedMail.__table__)

# Id lists in one statement stay under SQLite's bound-parameter limit.
CHUNK = 500
# Notifications that name a person for a hit (replies are mail they sent, not tracking).
TRACKING_NOTIFICATIONS = (
    NotificationKind.FIRST_OPEN,
    NotificationKind.FIRST_CLICK,
    NotificationKind.REOPEN,
)
_FIGURES_RESET = {
    "open_count": 0,
    "click_count": 0,
    "machine_event_count": 0,
    "forwarded_open_count": 0,
    "first_open_at": None,
    "last_open_at": None,
    "first_click_at": None,
    "last_click_at": None,
    "last_event_at": None,
}


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), CHUNK):
        yield items[start : start + CHUNK]


# ------------------------------------------------------------------ organisations


def organisation(session: Session, organisation_id: int) -> Organisation | None:
    return session.get(Organisation, organisation_id)


def organisations(session: Session) -> list[Organisation]:
    return list(session.scalars(select(Organisation).order_by(Organisation.id)))


def organisation_by_name(session: Session, name: str) -> Organisation | None:
    return session.scalars(
        select(Organisation).where(Organisation.name == name).order_by(Organisation.id).limit(1)
    ).one_or_none()


def first_organisation(session: Session) -> Organisation | None:
    return session.scalars(select(Organisation).order_by(Organisation.id).limit(1)).one_or_none()


def first_admin(session: Session, organisation_id: int) -> User | None:
    return session.scalars(
        select(User)
        .where(User.organisation_id == organisation_id, User.role == "admin")
        .order_by(User.id)
        .limit(1)
    ).one_or_none()


def _org_messages(organisation_id: int) -> Select[Any]:
    """The ids of the organisation's emails (its users' sends)."""
    return (
        select(_messages.c.id)
        .join(_users, _users.c.id == _messages.c.user_id)
        .where(_users.c.organisation_id == organisation_id)
    )


# ------------------------------------------------------------------ contacts


def contact(session: Session, organisation_id: int, address: str) -> Contact | None:
    return session.scalars(
        select(Contact).where(Contact.organisation_id == organisation_id, Contact.email == address)
    ).one_or_none()


def contact_by_id(session: Session, contact_id: int) -> Contact | None:
    return session.get(Contact, contact_id)


def add_contact(session: Session, organisation_id: int, address: str, name: str = "") -> Contact:
    found = Contact(organisation_id=organisation_id, email=address, name=name[:200])
    session.add(found)
    session.flush()
    return found


def consent_states(
    session: Session, organisation_id: int, addresses: Collection[str]
) -> dict[str, str]:
    """The consent state of each address that is a contact of the organisation."""
    found: dict[str, str] = {}
    for chunk in _chunks(sorted(addresses)):
        rows = session.execute(
            select(_contacts.c.email, _contacts.c.consent_state).where(
                _contacts.c.organisation_id == organisation_id, _contacts.c.email.in_(chunk)
            )
        )
        found.update((email, state) for email, state in rows)
    return found


def erased_keys(session: Session, organisation_id: int, keys: Collection[str]) -> set[str]:
    found: set[str] = set()
    for chunk in _chunks(sorted(keys)):
        found.update(
            session.scalars(
                select(ErasedAddress.address_key).where(
                    ErasedAddress.organisation_id == organisation_id,
                    ErasedAddress.address_key.in_(chunk),
                )
            )
        )
    return found


def remember_erased(session: Session, organisation_id: int, key: str, at: datetime) -> None:
    existing = session.scalars(
        select(ErasedAddress).where(
            ErasedAddress.organisation_id == organisation_id, ErasedAddress.address_key == key
        )
    ).one_or_none()
    if existing is None:
        session.add(ErasedAddress(organisation_id=organisation_id, address_key=key, erased_at=at))
    else:
        existing.erased_at = at


def forget_erased(session: Session, organisation_id: int, key: str) -> None:
    session.execute(
        delete(ErasedAddress).where(
            ErasedAddress.organisation_id == organisation_id, ErasedAddress.address_key == key
        )
    )


def list_contacts(
    session: Session,
    organisation_id: int,
    *,
    q: str,
    state: str | None,
    after: tuple[datetime, int] | None,
    limit: int,
) -> list[Contact]:
    """Contacts by address (then id), from after a position; ``q`` matches address or name."""
    query = select(Contact).where(Contact.organisation_id == organisation_id)
    if q:
        escaped = q.lower().replace("/", "//").replace("%", "/%").replace("_", "/_")
        pattern = f"%{escaped}%"
        query = query.where(
            or_(
                Contact.email.like(pattern, escape="/"),
                func.lower(Contact.name).like(pattern, escape="/"),
            )
        )
    if state:
        query = query.where(Contact.consent_state == state)
    if after is not None:
        query = query.where(tuple_(Contact.created_at, Contact.id) < after)
    query = query.order_by(Contact.created_at.desc(), Contact.id.desc()).limit(limit)
    return list(session.scalars(query))


def consent_history(session: Session, contact_id: int) -> list[ConsentRecord]:
    return list(
        session.scalars(
            select(ConsentRecord)
            .where(ConsentRecord.contact_id == contact_id)
            .order_by(ConsentRecord.recorded_at.desc(), ConsentRecord.id.desc())
        )
    )


def add_consent_record(session: Session, record: ConsentRecord) -> None:
    session.add(record)


# ------------------------------------------------------------------ what was sent to a contact


def _copies_of_contact(
    organisation_id: int, contact_id: int | None, address: str
) -> ColumnElement[bool]:
    by_address = and_(
        _copies.c.contact_id.is_(None), func.lower(_copies.c.address) == address.lower()
    )
    mine = by_address if contact_id is None else or_(_copies.c.contact_id == contact_id, by_address)
    return and_(mine, _copies.c.message_id.in_(_org_messages(organisation_id)))


def contact_copies(
    session: Session,
    organisation_id: int,
    contact_id: int | None,
    address: str,
    *,
    sender_id: int | None = None,
) -> list[Row[Any]]:
    """The contact's copies with their emails, newest first; only ``sender_id``'s emails
    if given (a user sees the tracking of their own emails only)."""
    query = (
        select(
            _copies,
            _messages.c.subject,
            _messages.c.sent_at.label("message_sent_at"),
            _messages.c.created_at.label("message_created_at"),
            _messages.c.sender_address,
            _messages.c.sender_name,
            _messages.c.user_id,
        )
        .join(_messages, _messages.c.id == _copies.c.message_id)
        .where(_copies_of_contact(organisation_id, contact_id, address))
        .order_by(_messages.c.created_at.desc(), _copies.c.id.desc())
    )
    if sender_id is not None:
        query = query.where(_messages.c.user_id == sender_id)
    return list(session.execute(query))


def events_of_copies(
    session: Session,
    copy_ids: Sequence[int],
    *,
    before: tuple[datetime, int] | None = None,
    limit: int | None = None,
) -> list[Row[Any]]:
    """The events of some copies, newest first, with the link each click followed."""
    if not copy_ids:
        return []
    query = (
        select(
            _events.c.id,
            _events.c.copy_id,
            _events.c.message_id,
            _events.c.kind,
            _events.c.occurred_at,
            _events.c.label,
            _events.c.reason,
            _events.c.user_agent,
            _events.c.ip_prefix,
            _events.c.network,
            _events.c.link_position,
            _events.c.possibly_forwarded,
            _links.c.url.label("link_url"),
        )
        .outerjoin(
            _links,
            and_(
                _links.c.message_id == _events.c.message_id,
                _links.c.position == _events.c.link_position,
            ),
        )
        .where(_events.c.copy_id.in_(list(copy_ids)))
        .order_by(_events.c.occurred_at.desc(), _events.c.id.desc())
    )
    if before is not None:
        query = query.where(tuple_(_events.c.occurred_at, _events.c.id) < before)
    if limit is not None:
        query = query.limit(limit)
    return list(session.execute(query))


def link_stats_of_copies(session: Session, copy_ids: Sequence[int]) -> list[Row[Any]]:
    if not copy_ids:
        return []
    return list(
        session.execute(
            select(_link_stats, _links.c.url)
            .join(_copies, _copies.c.id == _link_stats.c.copy_id)
            .outerjoin(
                _links,
                and_(
                    _links.c.message_id == _copies.c.message_id,
                    _links.c.position == _link_stats.c.position,
                ),
            )
            .where(_link_stats.c.copy_id.in_(list(copy_ids)))
            .order_by(_link_stats.c.copy_id, _link_stats.c.position)
        )
    )


def _received_from(
    organisation_id: int, copy_ids: Sequence[int], address: str
) -> ColumnElement[bool]:
    org_users = select(_users.c.id).where(_users.c.organisation_id == organisation_id)
    by_address = and_(
        _received.c.user_id.in_(org_users), func.lower(_received.c.from_address) == address
    )
    return or_(_received.c.copy_id.in_(list(copy_ids)), by_address) if copy_ids else by_address


def received_from_contact(
    session: Session, organisation_id: int, copy_ids: Sequence[int], address: str
) -> list[ReceivedMail]:
    """Replies, automatic replies and bounces that answer the contact's copies or came
    from the address."""
    return list(
        session.scalars(
            select(ReceivedMail)
            .where(_received_from(organisation_id, copy_ids, address))
            .order_by(ReceivedMail.received_at, ReceivedMail.id)
        )
    )


# ------------------------------------------------------------------ forgetting


def forget_tracking(session: Session, copy_ids: Sequence[int]) -> int:
    """Delete the events, link figures and tracking notifications of some copies and zero
    their figures; the emails' figures stay (they become anonymous counts)."""
    deleted = 0
    for chunk in _chunks(sorted(copy_ids)):
        deleted += _rowcount(session.execute(delete(_events).where(_events.c.copy_id.in_(chunk))))
        session.execute(delete(_link_stats).where(_link_stats.c.copy_id.in_(chunk)))
        session.execute(
            delete(_notifications).where(
                _notifications.c.copy_id.in_(chunk),
                _notifications.c.kind.in_(TRACKING_NOTIFICATIONS),
            )
        )
        session.execute(update(_copies).where(_copies.c.id.in_(chunk)).values(_FIGURES_RESET))
    return deleted


def erase_copies(
    session: Session, organisation_id: int, copy_ids: Sequence[int], address: str
) -> tuple[int, int]:
    """Delete the copies (their events, link figures and notifications go with them),
    and what was received from the contact; returns (copies, received mails) deleted."""
    received = list(
        session.execute(
            select(
                _received.c.id,
                _received.c.message_id,
                _received.c.copy_id,
                _received.c.from_address,
                _received.c.from_name,
            ).where(_received_from(organisation_id, copy_ids, address))
        )
    )
    for row in received:
        if row.copy_id is not None:
            continue  # its notifications go with the copy
        # A reply from someone the email was forwarded to has no copy: its notification
        # is found by the email and the words naming the person in its title.
        names = [n for n in (row.from_address, row.from_name) if n and len(n) >= 3]
        if names:
            session.execute(
                delete(_notifications).where(
                    _notifications.c.message_id == row.message_id,
                    _notifications.c.copy_id.is_(None),
                    _notifications.c.kind == NotificationKind.REPLY,
                    or_(*(func.lower(_notifications.c.title).contains(n.lower()) for n in names)),
                )
            )
    for chunk in _chunks([r.id for r in received]):
        session.execute(delete(_received).where(_received.c.id.in_(chunk)))
    removed = 0
    for chunk in _chunks(sorted(copy_ids)):
        # Deleted explicitly rather than trusting the cascade alone: the same statements
        # work whether or not a connection enforces foreign keys.
        session.execute(delete(_events).where(_events.c.copy_id.in_(chunk)))
        session.execute(delete(_link_stats).where(_link_stats.c.copy_id.in_(chunk)))
        session.execute(delete(_notifications).where(_notifications.c.copy_id.in_(chunk)))
        removed += _rowcount(session.execute(delete(_copies).where(_copies.c.id.in_(chunk))))
    return removed, len(received)


def messages_by_id(session: Session, message_ids: Collection[int]) -> list[Message]:
    found: list[Message] = []
    for chunk in _chunks(sorted(message_ids)):
        found.extend(session.scalars(select(Message).where(Message.id.in_(chunk))))
    return found


def erase_demo_deliveries(session: Session, address: str) -> int:
    """Demo inbox deliveries to the address, or naming it anywhere in their bytes."""
    raw = DemoMessage.raw
    if session.get_bind().dialect.name == "postgresql":
        contains = func.strpos(func.lower(func.encode(raw, "escape")), address) > 0
    else:
        contains = func.instr(func.lower(sql_cast(raw, String)), address) > 0
    result = session.execute(
        delete(DemoMessage).where(or_(func.lower(DemoMessage.recipient) == address, contains))
    )
    return _rowcount(result)


def delete_contact(session: Session, contact_id: int) -> None:
    session.execute(delete(ConsentRecord).where(ConsentRecord.contact_id == contact_id))
    session.execute(delete(Contact).where(Contact.id == contact_id))


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0) or 0)


# ------------------------------------------------------------------ the hit-time gate


def gate_facts(session: Session, copy_ids: Sequence[int]) -> list[Row[Any]]:
    """What the gate rules on, per copy: its sender's organisation's policy, its contact's
    consent state, whether it went to the demo mailbox."""
    c, m = _copies.c, _messages.c
    query = select(
        c.id,
        m.user_id,
        _orgs.c.tracking_mode,
        _orgs.c.consent_required,
        _orgs.c.store_network,
        _contacts.c.consent_state,
        _mailboxes.c.is_demo,
    ).select_from(
        _copies.join(_messages, m.id == c.message_id)
        .outerjoin(_users, _users.c.id == m.user_id)
        .outerjoin(_orgs, _orgs.c.id == _users.c.organisation_id)
        .outerjoin(_contacts, _contacts.c.id == c.contact_id)
        .outerjoin(_mailboxes, _mailboxes.c.id == m.mailbox_connection_id)
    )
    dialect = session.get_bind().dialect
    # The batch's ids as one parameter: the query is compiled once, whatever the batch.
    # all(): one fetch for the whole result, not a call through the result per row.
    rows = session.execute(
        query.where(in_list(c.id, "ids", dialect)), {"ids": list_value(dialect, sorted(copy_ids))}
    ).all()
    return cast(list[Row[Any]], rows)


# ------------------------------------------------------------------ possibly forwarded opens

# What a row of first_human_opens answers for: a copy, or one of its prefixes or agents.
COPY, PREFIX, AGENT = 0, 1, 2


def first_human_opens(
    session: Session,
    copy_ids: Sequence[int],
    prefixes: Sequence[tuple[int, str]],
    agents: Sequence[tuple[int, str]],
) -> list[Row[Any]]:
    """When the stored human opens (those not marked possibly forwarded) of some copies
    were first seen: each copy's first of all, and its first from each given network
    prefix and from each given agent.

    Rows of (what, copy, key, first seen or None): ``what`` is ``COPY`` (key None),
    ``PREFIX`` or ``AGENT``.

    Each answer is the first entry of an index range of
    ``ix_tracking_events_human_prefixes`` or ``_human_agents``, which hold those opens
    alone, keyed by copy and source, then time; or, for the copy's first, the first
    human open among its events in time order (``ix_tracking_events_copy_time``), which
    only the machines' hits that came before it delay. So what a batch costs does not
    grow with the number of times its copies were opened before.
    """
    e = _events.c
    dialect = session.get_bind().dialect
    copies = json_rows("copies", dialect, copy_id=BigInteger())
    by_prefix = json_rows("prefixes", dialect, copy_id=BigInteger(), key=Text())
    by_agent = json_rows("agents", dialect, copy_id=BigInteger(), key=Text())
    # The indexes' own condition, as written there (see HUMAN_SOURCE_OPENS).
    opens = text(HUMAN_SOURCE_OPENS)

    def lookup(what: int, rows: Any, column: Any = None) -> Select[Any]:
        """The first human open per row of ``rows``: of its copy, and from its key in
        ``column`` where one is given."""
        where = [e.copy_id == rows.c.copy_id]
        if column is not None:
            where.append(column == rows.c.key)
        first = select(func.min(e.occurred_at)).where(*where, opens).scalar_subquery()
        key = null().label("key") if column is None else rows.c.key
        return select(literal_column(str(what), Integer()), rows.c.copy_id, key, first)

    query = union_all(
        lookup(COPY, copies),
        lookup(PREFIX, by_prefix, e.ip_prefix),
        lookup(AGENT, by_agent, e.user_agent),
    )
    # all(): one fetch for the whole result, not a call through the result per row.
    rows = session.execute(
        query,
        {
            "copies": json_rows_value((c,) for c in copy_ids),
            "prefixes": json_rows_value(prefixes),
            "agents": json_rows_value(agents),
        },
    ).all()
    return cast(list[Row[Any]], rows)


# ------------------------------------------------------------------ retention


def old_event_ids(
    session: Session, organisation_id: int, cutoff: datetime, limit: int
) -> list[int]:
    return list(
        session.scalars(
            select(_events.c.id)
            .where(
                _events.c.message_id.in_(_org_messages(organisation_id)),
                _events.c.occurred_at < cutoff,
            )
            .limit(limit)
        )
    )


def delete_events(session: Session, event_ids: Sequence[int]) -> int:
    deleted = 0
    for chunk in _chunks(list(event_ids)):
        deleted += _rowcount(session.execute(delete(_events).where(_events.c.id.in_(chunk))))
    return deleted


def quiet_copy_ids(session: Session, organisation_id: int, cutoff: datetime) -> list[int]:
    """Copies whose last event is older than the cutoff and that still carry figures."""
    c = _copies.c
    return list(
        session.scalars(
            select(c.id).where(
                c.message_id.in_(_org_messages(organisation_id)),
                c.last_event_at < cutoff,
            )
        )
    )


def delete_old_tracking_notifications(
    session: Session, organisation_id: int, cutoff: datetime
) -> int:
    org_users = select(_users.c.id).where(_users.c.organisation_id == organisation_id)
    return _rowcount(
        session.execute(
            delete(_notifications).where(
                _notifications.c.user_id.in_(org_users),
                _notifications.c.kind.in_(TRACKING_NOTIFICATIONS),
                _notifications.c.created_at < cutoff,
            )
        )
    )


def prune_anonymous_hits(session: Session, before: datetime) -> int:
    return _rowcount(session.execute(delete(AnonymousHit).where(AnonymousHit.recorded_at < before)))


# ------------------------------------------------------------------ audit


def add_audit_entry(session: Session, values: dict[str, Any]) -> None:
    session.execute(insert(AuditEntry).values(values))


def audit_entries(
    session: Session,
    organisation_id: int,
    *,
    before: tuple[datetime, int] | None,
    limit: int | None,
) -> list[AuditEntry]:
    query = select(AuditEntry).where(AuditEntry.organisation_id == organisation_id)
    if before is not None:
        query = query.where(tuple_(AuditEntry.at, AuditEntry.id) < before)
    query = query.order_by(AuditEntry.at.desc(), AuditEntry.id.desc())
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def blank_audit_subject(session: Session, organisation_id: int, key: str) -> None:
    session.execute(
        update(AuditEntry)
        .where(AuditEntry.organisation_id == organisation_id, AuditEntry.subject_key == key)
        .values(subject="")
    )
