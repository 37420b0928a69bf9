"""The read side of sent email: the Mail tab, an email's detail, its timeline.

Delivery and tracking of a sent email are read here together, for the pages and
the JSON API alike. Every query is scoped to the sending user: another user's
email does not exist (``MailNotFound``), whatever organisation they share. The
list reads the figures the hit pipeline keeps on ``messages`` and
``recipient_copies`` and never counts events; a page of emails costs three
queries whatever the history: the page itself (keyset pagination on the
``(user_id, created_at)`` index), the page's copies, and the newest events of
each of the page's emails for the hover lists (each email's own index range,
bounded by ``HOVER_EVENTS``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import datetime
from functools import lru_cache
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    Integer,
    Select,
    Table,
    Text,
    and_,
    column,
    func,
    or_,
    select,
    table,
    text,
    tuple_,
    union_all,
)
from sqlalchemy.orm import Session

from mailbeacon.kit import frames
from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.kit.display import display_name, names_in_headers
from mailbeacon.kit.errors import NotFound
from mailbeacon.kit.sanitize import sanitize_email_html
from mailbeacon.mail import attachments
from mailbeacon.mail.ports import TrackedLinks
from mailbeacon.mail.schemas import (
    AttachmentOut,
    BounceOut,
    EventOut,
    EventPageOut,
    IconOut,
    LinkClicksOut,
    LinkOut,
    MailDetailOut,
    MailFilter,
    MailPageOut,
    MailRowOut,
    RecipientDetailOut,
    RecipientOut,
    ReplyOut,
    SentCopyOut,
    figures_of,
)
from mailbeacon.mail.wording import judged
from mailbeacon.models import (
    Contact,
    CopyStatus,
    EventKind,
    EventLabel,
    LinkClickStat,
    Message,
    MessageLink,
    ReceivedKind,
    ReceivedMail,
    RecipientCopy,
    SentFolderCopy,
    TrackingEvent,
)
from mailbeacon.models.event import PERSON_LABELS

# A result row; SQLAlchemy's typed rows add nothing for column lists built at run time.
_Row = Any

_messages = cast(Table, Message.__table__)
_copies = cast(Table, RecipientCopy.__table__)
_contacts = cast(Table, Contact.__table__)
_events = cast(Table, TrackingEvent.__table__)
_links = cast(Table, MessageLink.__table__)
_link_stats = cast(Table, LinkClickStat.__table__)

PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# Events per email in the hover lists; the rest is one click away, on the timeline.
HOVER_EVENTS = 40
TIMELINE_PAGE = 200
MAX_SEARCH_CHARS = 200
# A search matching more emails than this walks the newest emails instead (_Search).
SEARCH_CANDIDATES = 1000
# Matches of SQLite's trigram index (every user's emails) beyond which a search is taken
# for a common term, found faster by walking the newest emails.
TRIGRAM_CANDIDATES = 5000
# The FTS5 table migration a3d5f7b9c1e2 creates where SQLite has the trigram tokenizer.
_HAS_TRIGRAM_INDEX = text(
    "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'messages_search'"
)
_TRIGRAM_MATCHES = text(
    "SELECT rowid FROM messages_search WHERE messages_search MATCH :phrase LIMIT :n"
)
# A narrow, lowered copy of what the search matches, with the list's sort key, kept by
# triggers: on PostgreSQL indexed with pg_trgm where available (migration d6a8c0e2f4b5),
# on SQLite keyed by user and date (f8c0e2a4b6d7, b0e2a4c6d8f1). No model: its key and
# its triggers differ between the backends.
_search_text = table(
    "messages_search_text",
    column("message_id", BigInteger),
    column("user_id", Integer),
    column("is_preview", Boolean),
    column("search_text", Text),
    # Typed as on messages, so the cursor's date is written as the copy holds it.
    column("created_at", _messages.c.created_at.type),
)
_CUSTOM_PLANS = text("SET LOCAL plan_cache_mode = force_custom_plan")
# Replies shown per email (a mailing list gone wrong must not make a page of megabytes).
MAX_REPLIES = 200


class MailNotFound(NotFound):
    """No such email among the user's own (another user's email is never found)."""


# ------------------------------------------------------------------ the list

_ROW_COLUMNS = (
    _messages.c.id,
    _messages.c.subject,
    _messages.c.created_at,
    _messages.c.sent_at,
    _messages.c.to_header,
    _messages.c.cc_header,
    _messages.c.open_tracking,
    _messages.c.link_tracking,
    _messages.c.open_count,
    _messages.c.click_count,
    _messages.c.machine_event_count,
    _messages.c.first_open_at,
    _messages.c.last_open_at,
    _messages.c.first_click_at,
    _messages.c.last_click_at,
    _messages.c.forwarded_open_count,
    _messages.c.reply_count,
    _messages.c.last_reply_at,
)


def _filter_clause(mail_filter: MailFilter | None) -> ColumnElement[bool] | None:
    m = _messages.c
    if mail_filter == MailFilter.TRACKED:
        return or_(m.open_tracking.is_(True), m.link_tracking.is_(True))
    if mail_filter == MailFilter.OPENED:
        return m.open_count > 0
    if mail_filter == MailFilter.CLICKED:
        return m.click_count > 0
    if mail_filter == MailFilter.NOT_OPENED:
        return and_(m.open_tracking.is_(True), m.open_count == 0)
    return None


class _Search:
    """Matching a search on the subject or any recipient: To and Cc in the message's own
    headers (display names too), Bcc in the copies.

    Subject, To and Cc are matched on ``messages_search_text``, the searched columns
    lowered and joined once (see bench/README.md), both when looking up a term's
    matches and when walking the newest emails. SQLite's lower() and LIKE both fold
    ASCII case only, so its lowered copy changes nothing LIKE sees; on PostgreSQL
    lower() LIKE (also on the Bcc addresses) is twice as fast as ILIKE.

    Both backends join the columns with a newline (migrations f8c0e2a4b6d7 and
    a9d1f3b5c7e9), which no search contains (``mail_page`` folds whitespace to single
    spaces) and LIKE's escaped pattern cannot stand for: a match is a match within one
    column, as with a LIKE per column.
    """

    def __init__(self, q: str, dialect: str) -> None:
        self.q = q.lower()
        escaped = self.q.replace("/", "//").replace("%", "/%").replace("_", "/_")
        self.pattern = f"%{escaped}%"
        self.postgres = dialect == "postgresql"

    def trigram_phrase(self) -> str | None:
        """The search as one FTS5 phrase (SQLite's trigram index), or None if it is too
        short to have a trigram.

        Inside double quotes FTS5 reads every character literally (a quote is written
        twice), so operators (``NEAR``, ``*``, ``-``, ``AND``) are text like any other.
        The trigram tokenizer folds case at least as widely as LIKE does (Unicode, not
        only ASCII), so the phrase finds every row the LIKE matches, and maybe more;
        the LIKE then decides.
        """
        if self.postgres or len(self.q) < 3:
            return None
        return '"' + self.q.replace('"', '""') + '"'

    def _like(self, column: Any) -> ColumnElement[bool]:
        target = func.lower(column) if self.postgres else column
        return cast(ColumnElement[bool], target.like(self.pattern, escape="/"))

    def headers(self) -> ColumnElement[bool]:
        """Subject, To or Cc, on ``messages_search_text`` (already lowered)."""
        return cast(ColumnElement[bool], _search_text.c.search_text.like(self.pattern, escape="/"))

    def bcc(self) -> Select[Any]:
        c = _copies.c
        return select(c.message_id).where(c.kind == "bcc", self._like(c.address))

    def clause(self) -> ColumnElement[bool]:
        """The whole match, on ``messages_search_text``: its text, or a Bcc copy."""
        return or_(self.headers(), _search_text.c.message_id.in_(self.bcc()))


def _search_candidates(session: Session, user_id: int, search: _Search) -> list[int] | None:
    """The ids of the user's emails that match, or None if there are more than
    ``SEARCH_CANDIDATES``.

    A rare term is best found through its matches (a trigram index makes that
    instant), a common one by walking the newest emails until a page is full.
    This asks the first question with a bound, and the page query takes
    whichever road the answer points to.
    """
    found = _header_matches(session, user_id, search)
    if len(found) > SEARCH_CANDIDATES:
        return None
    # Bcc copies of anyone's emails: the page query keeps only the user's own, and
    # joining the user's emails here would look up every one of them.
    found.update(session.scalars(search.bcc().limit(SEARCH_CANDIDATES + 1)))
    return None if len(found) > SEARCH_CANDIDATES else sorted(found)


def _header_matches(session: Session, user_id: int, search: _Search) -> set[int]:
    """The user's emails whose subject, To or Cc match, at most ``SEARCH_CANDIDATES + 1``.

    On ``messages_search_text``: already lowered and a third of the size of
    ``messages``, so a search too short for a trigram scans it quickly, and a common
    term stops at the bound (on PostgreSQL the column's statistics tell the planner it
    is common; a rare term goes through the pg_trgm index). On SQLite the trigram
    candidates, when there are few enough, are each one seek.
    """
    t = _search_text.c
    indexed = _trigram_matches(session, search)
    if indexed is None:
        owner: ColumnElement[bool] = t.user_id == user_id
    else:
        # Each candidate looked up through the unique index on message_id and kept if the
        # user's (b0e2a4c6d8f1): with the owner usable as a key, SQLite takes the primary
        # key's range of the owner's rows instead, and reads all of them.
        owner = and_((t.user_id + 0) == user_id, t.message_id.in_(indexed))
    query = select(t.message_id).where(owner, t.is_preview.is_(False), search.headers())
    return set(session.scalars(query.limit(SEARCH_CANDIDATES + 1)))


def _trigram_matches(session: Session, search: _Search) -> list[int] | None:
    """Ids of emails (anyone's) whose headers may match, from SQLite's trigram index; None
    where it cannot narrow the search (a search under three characters, no FTS5 table,
    or a term so common that walking the newest emails is quicker)."""
    phrase = search.trigram_phrase()
    if phrase is None or not session.scalar(_HAS_TRIGRAM_INDEX):
        return None
    ids = list(session.scalars(_TRIGRAM_MATCHES, {"phrase": phrase, "n": TRIGRAM_CANDIDATES + 1}))
    return None if len(ids) > TRIGRAM_CANDIDATES else ids


# The list's order, newest first with the id breaking ties (the cursors hold both):
# on messages, or on their copies in messages_search_text, which hold the same values.
_ListKey = tuple[ColumnElement[Any], ColumnElement[Any]]
_MESSAGES_KEY: _ListKey = (_messages.c.created_at, _messages.c.id)


def _list_query(
    session: Session, user_id: int, mail_filter: MailFilter | None, q: str
) -> tuple[Select[Any], _ListKey] | None:
    """The page query before ordering and paging, and the key to order and page it by;
    None when nothing can match."""
    query = select(*_ROW_COLUMNS).where(
        _messages.c.user_id == user_id, _messages.c.is_preview.is_(False)
    )
    key = _MESSAGES_KEY
    if q:
        search = _Search(q, session.get_bind().dialect.name)
        if search.postgres:
            # The right plan depends on what is typed (a scan for two characters, one that
            # stops early for a common term, the trigram index for a rare one), but psycopg
            # prepares a statement run five times on a connection, and PostgreSQL then
            # settles on one generic plan for every search: the index, which reads all of
            # it for two characters (200 ms at 100,000 emails). For this transaction only.
            session.execute(_CUSTOM_PLANS)
        candidates = _search_candidates(session, user_id, search)
        if candidates is None:
            # A common term: walk the user's copies newest first, in the list's order
            # (their own index), until the page is full; messages is read for the
            # matches only (migration b0e2a4c6d8f1).
            t = _search_text.c
            query = (
                select(*_ROW_COLUMNS)
                .select_from(_search_text.join(_messages, _messages.c.id == t.message_id))
                .where(t.user_id == user_id, t.is_preview.is_(False), search.clause())
            )
            key = (t.created_at, t.message_id)
        elif not candidates:
            return None
        else:
            query = query.where(_messages.c.id.in_(candidates))
    clause = _filter_clause(mail_filter)
    if clause is not None:
        query = query.where(clause)
    return query, key


def mail_page(
    session: Session,
    user_id: int,
    *,
    mail_filter: MailFilter | None = None,
    q: str = "",
    before: str | None = None,
    after: str | None = None,
    limit: int = PAGE_SIZE,
) -> MailPageOut:
    """One page of the user's sent emails, newest first, with icons and hover data."""
    # No stored subject or address holds a NUL, and PostgreSQL refuses one in a parameter.
    q = " ".join(q.replace("\x00", " ").split())[:MAX_SEARCH_CHARS]
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    listed = _list_query(session, user_id, mail_filter, q)
    if listed is None:
        return MailPageOut(items=[], older_cursor=None, newer_cursor=None)
    query, (created_at, message_id) = listed
    position = tuple_(created_at, message_id)
    newer_first = (created_at.desc(), message_id.desc())
    older_first = (created_at.asc(), message_id.asc())
    after_at = decode_cursor(after)
    before_at = decode_cursor(before)
    if after_at is not None:
        # Walking back towards the newest: read upwards, then turn the page round.
        newer = query.where(position > after_at).order_by(*older_first)
        found = list(session.execute(newer.limit(limit + 1)))
        more_newer = len(found) > limit
        rows = list(reversed(found[:limit]))
        more_older = True
    else:
        if before_at is not None:
            query = query.where(position < before_at)
        found = list(session.execute(query.order_by(*newer_first).limit(limit + 1)))
        rows = found[:limit]
        more_older = len(found) > limit
        more_newer = before_at is not None
    items = _rows_out(session, rows)
    first, last = (rows[0], rows[-1]) if rows else (None, None)
    return MailPageOut(
        items=items,
        older_cursor=encode_cursor(last.created_at, last.id) if last and more_older else None,
        newer_cursor=encode_cursor(first.created_at, first.id) if first and more_newer else None,
    )


def mail_rows(session: Session, user_id: int, message_ids: Iterable[int]) -> list[MailRowOut]:
    """Some of the user's emails as the list shows them (a live update of a few rows)."""
    ids = sorted(set(message_ids))[:MAX_PAGE_SIZE]
    if not ids:
        return []
    rows = list(
        session.execute(
            select(*_ROW_COLUMNS)
            .where(_messages.c.user_id == user_id, _messages.c.id.in_(ids))
            .order_by(_messages.c.created_at.desc(), _messages.c.id.desc())
        )
    )
    return _rows_out(session, rows)


def _rows_out(session: Session, rows: Sequence[_Row]) -> list[MailRowOut]:
    ids = [r.id for r in rows]
    copies = _copies_of(session, ids)
    events = _hover_events(session, rows)
    return [_row_out(r, copies[r.id], events[r.id]) for r in rows]


def _copies_of(session: Session, message_ids: Sequence[int]) -> dict[int, list[_Row]]:
    found: dict[int, list[_Row]] = {m: [] for m in message_ids}
    if message_ids:
        for row in session.execute(
            select(_copies, _contacts.c.name.label("contact_name"))
            .outerjoin(_contacts, _contacts.c.id == _copies.c.contact_id)
            .where(_copies.c.message_id.in_(message_ids))
            .order_by(_copies.c.message_id, _copies.c.id)
        ):
            found[row.message_id].append(row)
    return found


def _event_columns() -> tuple[Any, ...]:
    return (
        _events.c.id,
        _events.c.message_id,
        _events.c.copy_id,
        _events.c.kind,
        _events.c.link_position,
        _events.c.occurred_at,
        _events.c.label,
        _events.c.reason,
        _copies.c.address,
        _links.c.url,
        _links.c.text,
        _copies.c.status.label("copy_status"),
        _events.c.possibly_forwarded,
        _contacts.c.name.label("contact_name"),
        _messages.c.to_header,
        _messages.c.cc_header,
    )


def _with_names(query: Select[Any]) -> Select[Any]:
    return (
        query.join(_copies, _copies.c.id == _events.c.copy_id)
        .join(_messages, _messages.c.id == _events.c.message_id)
        .outerjoin(_contacts, _contacts.c.id == _copies.c.contact_id)
        .outerjoin(
            _links,
            and_(
                _links.c.message_id == _events.c.message_id,
                _links.c.position == _events.c.link_position,
            ),
        )
    )


@lru_cache(maxsize=256)
def _header_names(to_header: str, cc_header: str) -> dict[str, str]:
    """Names as written in an email's To and Cc (every event of an email reads the same)."""
    return names_in_headers(to_header, cc_header)


def _event_total(r: _Row) -> int:
    return int(r.open_count + r.click_count + r.machine_event_count)


def _hover_events(session: Session, rows: Sequence[_Row]) -> dict[int, list[EventOut]]:
    """The newest ``HOVER_EVENTS`` events of each email, in at most two queries.

    The figures say how many events each email has (the writer keeps them in
    the events' own transaction), so an email without any costs nothing, the
    emails with few are read whole in one query, and only the rare email with
    more (a scanner hammered it) gets its own bounded range of the
    ``(message_id, occurred_at)`` index, all of those in a second query.
    """
    found: dict[int, list[EventOut]] = {r.id: [] for r in rows}
    few = [r.id for r in rows if 0 < _event_total(r) <= HOVER_EVENTS]
    many = [r.id for r in rows if _event_total(r) > HOVER_EVENTS]
    queries = []
    if few:
        queries.append(_with_names(select(*_event_columns())).where(_events.c.message_id.in_(few)))
    if many:
        newest = [
            select(
                select(_events.c.id)
                .where(_events.c.message_id == mid)
                .order_by(_events.c.occurred_at.desc(), _events.c.id.desc())
                .limit(HOVER_EVENTS)
                .subquery()
                .c.id
            )
            for mid in many
        ]
        chosen = union_all(*newest) if len(newest) > 1 else newest[0]
        queries.append(_with_names(select(*_event_columns())).where(_events.c.id.in_(chosen)))
    for query in queries:
        ordered = query.order_by(_events.c.occurred_at.desc(), _events.c.id.desc())
        for row in session.execute(ordered):
            found[row.message_id].append(_event_out(row))
    return found


def _event_out(row: _Row) -> EventOut:
    return EventOut(
        id=row.id,
        occurred_at=as_utc(row.occurred_at),
        kind=row.kind,
        label=row.label,
        person=row.label in PERSON_LABELS,
        judged=judged(EventKind(row.kind), EventLabel(row.label)),
        reason=row.reason,
        copy_id=row.copy_id,
        recipient=row.address,
        recipient_name=display_name(
            row.address, _header_names(row.to_header, row.cc_header), row.contact_name
        ),
        link_position=row.link_position,
        link_url=row.url,
        link_text=row.text,
        # Read here rather than stored with the event: a bounce often arrives after the
        # machines at the receiving end have already fetched the pixel.
        suspect=row.copy_status == CopyStatus.BOUNCED,
        possibly_forwarded=row.possibly_forwarded,
    )


def _icon(tracked: bool, count: int, events: list[EventOut], kind: str) -> IconOut:
    mine = [e for e in events if e.kind == kind]
    return IconOut(
        state="off" if not tracked else ("done" if count > 0 else "waiting"),
        count=count,
        occasions=[e for e in mine if e.person],
        machine=[e for e in mine if not e.person],
    )


def _recipient_out(c: _Row, names: dict[str, str]) -> RecipientOut:
    return RecipientOut(
        copy_id=c.id,
        address=c.address,
        name=display_name(c.address, names, c.contact_name),
        kind=c.kind,
        status=c.status,
        open_tracked=c.open_tracked,
        links_tracked=c.links_tracked,
        replied_at=c.replied_at,
        reply_count=c.reply_count,
        auto_replied_at=c.auto_replied_at,
        bounce=(
            BounceOut(code=c.bounce_status, diagnostic=c.bounce_diagnostic)
            if c.status == CopyStatus.BOUNCED
            else None
        ),
        **figures_of(c),
    )


def _row_out(r: _Row, copies: list[_Row], events: list[EventOut]) -> MailRowOut:
    total = r.open_count + r.click_count + r.machine_event_count
    return MailRowOut(
        id=r.id,
        subject=r.subject,
        created_at=r.created_at,
        sent_at=r.sent_at,
        to=r.to_header,
        cc=r.cc_header,
        recipients=[_recipient_out(c, _header_names(r.to_header, r.cc_header)) for c in copies],
        **figures_of(r),
        open_icon=_icon(any(c.open_tracked for c in copies), r.open_count, events, "open"),
        link_icon=_icon(any(c.links_tracked for c in copies), r.click_count, events, "click"),
        more_events=max(0, total - len(events)),
        reply_count=r.reply_count,
        last_reply_at=r.last_reply_at,
    )


# ------------------------------------------------------------------ one email


def _own_message(session: Session, user_id: int, message_id: int) -> Message:
    message = session.scalars(
        select(Message).where(
            Message.id == message_id, Message.user_id == user_id, Message.is_preview.is_(False)
        )
    ).one_or_none()
    if message is None:
        raise MailNotFound(message_id)
    return message


def mail_events(
    session: Session,
    user_id: int,
    message_id: int,
    *,
    before: str | None = None,
    limit: int = TIMELINE_PAGE,
) -> EventPageOut:
    """Every event of one of the user's emails, newest first, a page at a time."""
    _own_message(session, user_id, message_id)
    return _timeline(session, message_id, decode_cursor(before), max(1, min(limit, 1000)))


def _timeline(
    session: Session, message_id: int, before: tuple[datetime, int] | None, limit: int
) -> EventPageOut:
    query = _with_names(select(*_event_columns())).where(_events.c.message_id == message_id)
    if before is not None:
        query = query.where(tuple_(_events.c.occurred_at, _events.c.id) < before)
    query = query.order_by(_events.c.occurred_at.desc(), _events.c.id.desc()).limit(limit + 1)
    found = list(session.execute(query))
    items = [_event_out(r) for r in found[:limit]]
    last = items[-1] if items else None
    return EventPageOut(
        items=items,
        older_cursor=(
            encode_cursor(last.occurred_at, last.id) if last and len(found) > limit else None
        ),
    )


def _recipient_detail(
    copy: _Row, stats: Sequence[_Row], link_by_position: dict[int, _Row], names: dict[str, str]
) -> RecipientDetailOut:
    """One recipient's copy: delivery, decision, figures, and clicks per link."""
    per_link = []
    for s in stats:
        link = link_by_position.get(s.position)
        per_link.append(
            LinkClicksOut(
                position=s.position,
                url=link.url if link is not None else "",
                text=link.text if link is not None else "",
                click_count=s.click_count,
                machine_click_count=s.machine_click_count,
                first_click_at=s.first_click_at,
                last_click_at=s.last_click_at,
            )
        )
    return RecipientDetailOut(
        **_recipient_out(copy, names).model_dump(),
        decision=copy.decision,
        decision_reason=copy.decision_reason,
        sent_at=copy.sent_at,
        smtp_reply=copy.smtp_reply,
        links=per_link,
    )


def mail_detail(
    session: Session,
    user_id: int,
    message_id: int,
    *,
    links: TrackedLinks,
    remote_images: bool = False,
) -> MailDetailOut:
    """One of the user's emails: delivery and figures per recipient, clicks per link, the
    timeline, and the body as written, made safe to show (see :func:`safe_body_html`)."""
    message = _own_message(session, user_id, message_id)
    copies = _copies_of(session, [message.id])[message.id]
    message_links = list(
        session.execute(
            select(_links.c.position, _links.c.url, _links.c.text)
            .where(_links.c.message_id == message.id)
            .order_by(_links.c.position)
        )
    )
    link_by_position = {link.position: link for link in message_links}
    stats: dict[int, list[_Row]] = defaultdict(list)
    if copies:
        for s in session.execute(
            select(_link_stats)
            .where(_link_stats.c.copy_id.in_([c.id for c in copies]))
            .order_by(_link_stats.c.position)
        ):
            stats[s.copy_id].append(s)
    timeline = _timeline(session, message.id, None, TIMELINE_PAGE)
    hover = timeline.items[:HOVER_EVENTS]

    names = _header_names(message.to_header, message.cc_header)
    recipients = [_recipient_detail(c, stats[c.id], link_by_position, names) for c in copies]
    totals: dict[int, tuple[int, int]] = {}
    for per_copy in stats.values():
        for s in per_copy:
            people, machines = totals.get(s.position, (0, 0))
            totals[s.position] = (people + s.click_count, machines + s.machine_click_count)
    return MailDetailOut(
        id=message.id,
        subject=message.subject,
        sender_name=message.sender_name,
        sender_address=message.sender_address,
        to=message.to_header,
        cc=message.cc_header,
        created_at=message.created_at,
        sent_at=message.sent_at,
        open_tracking=message.open_tracking,
        link_tracking=message.link_tracking,
        **figures_of(message),
        open_icon=_icon(any(c.open_tracked for c in copies), message.open_count, hover, "open"),
        link_icon=_icon(any(c.links_tracked for c in copies), message.click_count, hover, "click"),
        recipients=recipients,
        links=[
            LinkOut(
                position=link.position,
                url=link.url,
                text=link.text,
                click_count=totals.get(link.position, (0, 0))[0],
                machine_click_count=totals.get(link.position, (0, 0))[1],
            )
            for link in message_links
        ],
        body_html=(
            None
            if message.body_html is None
            else safe_body_html(message.body_html, links, remote_images=remote_images)
        ),
        body_text=(None if message.body_text is None else links.restore_in_text(message.body_text)),
        timeline=timeline.items,
        timeline_older_cursor=timeline.older_cursor,
        reply_count=message.reply_count,
        last_reply_at=message.last_reply_at,
        sent_copy=_sent_copy(session, message.id),
        attachments=[
            AttachmentOut(id=a.id, filename=a.filename, content_type=a.content_type, size=a.size)
            for a in attachments.listed(session, message.id)
        ],
    )


def _sent_copy(session: Session, message_id: int) -> SentCopyOut | None:
    row = session.scalars(
        select(SentFolderCopy).where(SentFolderCopy.message_id == message_id)
    ).one_or_none()
    if row is None:
        return None
    return SentCopyOut(
        status=row.status,
        folder=row.folder,
        saved_at=row.appended_at,
        replaced_count=row.replaced_count,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at,
        error=row.last_error,
    )


# ------------------------------------------------------------------ what came back


def mail_replies(
    session: Session,
    user_id: int,
    message_id: int,
    *,
    links: TrackedLinks,
    remote_images: bool = False,
) -> list[ReplyOut]:
    """Replies, automatic replies and bounces to one of the user's emails, oldest first.

    Shown as safely as the email itself: a reply quotes the email, pixel and
    tracked links included, so its HTML goes through :func:`safe_body_html` and
    its text has tracked links turned back into their destinations.
    """
    _own_message(session, user_id, message_id)
    found = session.scalars(
        select(ReceivedMail)
        .where(ReceivedMail.message_id == message_id, ReceivedMail.user_id == user_id)
        .order_by(ReceivedMail.received_at, ReceivedMail.id)
        .limit(MAX_REPLIES)
    )
    return [
        ReplyOut(
            id=r.id,
            kind=r.kind,
            copy_id=r.copy_id,
            from_address=r.from_address,
            from_name=r.from_name,
            subject=r.subject,
            received_at=r.received_at,
            new_text=links.restore_in_text(r.new_text),
            full_text=links.restore_in_text(r.full_text),
            body_html=(
                None
                if r.body_html is None
                else safe_body_html(r.body_html, links, remote_images=remote_images)
            ),
            bounce=(
                BounceOut(code=r.bounce_status, diagnostic=r.bounce_diagnostic)
                if r.kind == ReceivedKind.BOUNCE
                else None
            ),
        )
        for r in found
    ]


# ------------------------------------------------------------------ the body, made safe


def safe_body_html(body: str, links: TrackedLinks, *, remote_images: bool = False) -> str:
    """The body sanitised, every tracking pixel removed, tracked links restored, and remote
    images left out unless asked for.

    The sender reading their own email must never fire a pixel or a tracked link
    (DESIGN: "No false self-opens"), quoted ones from earlier emails included.
    """

    def image_src(src: str) -> str | None:
        return src if remote_images and not links.is_tracking_url(src) else None

    return sanitize_email_html(body, image_src=image_src, link_href=links.destination)


def body_document(detail: MailDetailOut) -> str:
    """The detail's body as the document of its sandboxed frame."""
    if detail.body_html is not None:
        return frames.html_document(detail.body_html)
    return frames.text_document(detail.body_text or "")
