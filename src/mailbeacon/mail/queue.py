"""The outbox worker's queries: claiming and settling copies, and worker presence.

Claiming is what keeps two workers from sending the same copy. On PostgreSQL the
due rows are picked with ``FOR UPDATE SKIP LOCKED``, so concurrent workers take
disjoint sets without waiting on each other. On SQLite the claim runs in a
transaction begun ``IMMEDIATE``, which holds the database's single write lock
from the start, and the ``UPDATE`` re-checks ``status = 'queued'``; no other
writer can slip in between choosing and claiming.

A copy may also be *reserved*: still ``queued``, but with ``claimed_by`` set, so
no other worker claims it. Reserving commits durably; starting a reserved copy
(``queued`` -> ``sending``, ``attempts + 1``) need not wait for the disk, because
a reserved copy whose owner died is put back in the queue only when its owner's
unflushed commits cannot have been lost (see ``tasks.Presence``), and becomes
``unknown`` otherwise.
"""

from __future__ import annotations

import contextlib
import re
import zlib
from collections.abc import Collection, Container, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    Connection,
    CursorResult,
    Table,
    TextClause,
    and_,
    bindparam,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError

from mailbeacon.kit.clock import as_utc
from mailbeacon.mail import attachments
from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.mail.events import CopyOutcome, DeliveryObserver, MessageSettled
from mailbeacon.models import (
    Contact,
    CopyStatus,
    DemoMessage,
    MailboxConnection,
    Message,
    OutboxEntry,
    RecipientCopy,
    SentCopyStatus,
    SentFolderCopy,
)
from mailbeacon.models.base import UTCDateTime

# ORM classes declare __table__ as a FromClause; these are plain tables.
_copies = cast(Table, RecipientCopy.__table__)
_outbox = cast(Table, OutboxEntry.__table__)
_contacts = cast(Table, Contact.__table__)
_demo = cast(Table, DemoMessage.__table__)
_messages = cast(Table, Message.__table__)
_mailboxes = cast(Table, MailboxConnection.__table__)
_sent_copies = cast(Table, SentFolderCopy.__table__)

REPLY_MAX = 1000  # recipient_copies.smtp_reply

# Advisory-lock class id for "an outbox worker with this id is alive" ("mb").
_PRESENCE_LOCK_CLASS = 0x6D62


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
    # The built-in demo mailbox (loopback): the address policy allows it for this one.
    is_demo: bool = False
    attachments: tuple[AttachmentFile, ...] = ()


@dataclass(frozen=True, slots=True)
class Settlement:
    """How one claimed copy ends this attempt, to be written by :func:`settle_copies`."""

    copy_id: int
    message_id: int
    status: CopyStatus  # sent, failed, unknown, or queued (retry later)
    reply: str
    next_attempt_at: datetime | None = None
    release: bool = False  # never tried (worker stopping): give the attempt back
    # False for a reserved copy never started: it only goes back to the queue.
    started: bool = True


@dataclass(frozen=True, slots=True)
class Round:
    """What one round of the worker got: copies claimed to send now, which of the
    reserved copies it asked to start did start, copies reserved for later, and the
    send context of each message new to the pass."""

    claimed: list[ClaimedCopy]
    started: set[int]
    reserved: list[ClaimedCopy]
    contexts: dict[int, SendContext]


# ------------------------------------------------------------------ the send path
#
# Claiming and settling run once per copy, on the worker's critical path. They are
# plain SQL run on the driver's own connection: through the expression language and
# SQLAlchemy's execution layer they cost several times the Python time of the SQL
# itself, which against a fast SMTP server was most of the worker's time per copy.
# The columns and states are the ones the models declare; timestamps are bound
# through the same UTCDateTime type as everywhere else, so SQLite stores the same
# text the ORM does.

# Served in due order, which the (status, next_attempt_at) index yields as it is:
# no sort of the whole queue per claim. Planning sets next_attempt_at, so new copies
# queue in the order they were planned. The re-checks outside the subquery are
# written `+status` so that SQLite finds the rows to update by id, not by walking
# every queued copy in the index (a unary plus keeps a column off its indexes).
_CLAIM_SQLITE = (
    "UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = attempts + 1"
    " WHERE id IN (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND claimed_by IS NULL"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit)"
    " AND +status = 'queued' AND +claimed_by IS NULL"
    " RETURNING id, message_id, address, html_body, text_body, attempts"
)
# Reserved copies come back with the attempt that starting them will count.
_RESERVE_SQLITE = (
    "UPDATE recipient_copies SET claimed_by = :worker, claimed_at = :now"
    " WHERE id IN (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND claimed_by IS NULL"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit)"
    " AND +status = 'queued' AND +claimed_by IS NULL"
    " RETURNING id, message_id, address, html_body, text_body, attempts + 1"
)
# A reserved copy found already `sending` under this worker was started by a round
# whose answer was lost (the lane never began it): it starts now, counted once.
_START_SQLITE = (
    "UPDATE recipient_copies SET status = 'sending', claimed_at = :now,"
    " attempts = attempts + (status = 'queued')"
    " WHERE id IN ({ids}) AND claimed_by = :worker AND status IN ('queued', 'sending')"
    " RETURNING id"
)
_UNRESERVE = (
    "UPDATE recipient_copies SET claimed_by = NULL, claimed_at = NULL"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'queued'"
)
# PostgreSQL workers never reserve (see ``SendQueue.round``), so their claims need
# not skip reserved copies; asked to, the planner misjudges how many queued copies
# have no ``claimed_by`` and sorts the whole queue instead of reading the index in
# order. A locking CTE runs exactly once. Written as "id IN (subquery)", PostgreSQL may
# rescan the subquery, and each rescan skips the rows the earlier ones locked: the
# UPDATE would then claim more rows than the LIMIT.
_CLAIM_POSTGRESQL = (
    "WITH due AS (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED)"
    " UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = recipient_copies.attempts + 1"
    " FROM due WHERE recipient_copies.id = due.id AND recipient_copies.status = 'queued'"
    " RETURNING recipient_copies.id, recipient_copies.message_id, recipient_copies.address,"
    " recipient_copies.html_body, recipient_copies.text_body, recipient_copies.attempts"
)
_SETTLE_SENT = (
    "UPDATE recipient_copies"
    " SET status = 'sent', sent_at = :now, next_attempt_at = NULL, smtp_reply = :reply"
    " WHERE id = :copy_id AND claimed_by = :worker AND status IN ('sending', 'unknown')"
)
_SETTLE_ENDED = (
    "UPDATE recipient_copies SET status = :status, smtp_reply = :reply"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'sending'"
)
_SETTLE_RETRY = (
    "UPDATE recipient_copies"
    " SET status = 'queued', claimed_by = NULL, claimed_at = NULL, next_attempt_at = :next,"
    " smtp_reply = :reply, attempts = attempts - :giveback"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'sending'"
)
_MESSAGE_STARTED = "UPDATE messages SET sent_at = :now WHERE id = :message_id AND sent_at IS NULL"
# On PostgreSQL a whole round is one statement: the outcomes (as arrays), the first
# sent_at of their messages, and the next claims. Run in autocommit it is one
# network round trip, commit included. The sub-statements touch disjoint rows: the
# settled copies are 'sending' and the claimed ones 'queued' in the statement's
# snapshot (a copy put back in the queue is claimable from the next round on).
_ROUND_POSTGRESQL = (
    "WITH outcome AS ("
    " SELECT * FROM unnest(:ids ::bigint[], :statuses ::varchar[], :replies ::varchar[],"
    " :nexts ::timestamptz[], :givebacks ::integer[])"
    " AS o(id, status, reply, next_at, giveback)"
    "), settled AS ("
    " UPDATE recipient_copies AS rc SET status = o.status, smtp_reply = o.reply,"
    " sent_at = CASE WHEN o.status = 'sent' THEN :now ELSE rc.sent_at END,"
    " next_attempt_at = CASE WHEN o.status = 'sent' THEN NULL"
    " WHEN o.status = 'queued' THEN o.next_at ELSE rc.next_attempt_at END,"
    " claimed_by = CASE WHEN o.status = 'queued' THEN NULL ELSE rc.claimed_by END,"
    " claimed_at = CASE WHEN o.status = 'queued' THEN NULL ELSE rc.claimed_at END,"
    " attempts = rc.attempts - o.giveback"
    " FROM outcome AS o"
    " WHERE rc.id = o.id AND rc.claimed_by = :worker"
    " AND (rc.status = 'sending' OR (o.status = 'sent' AND rc.status = 'unknown'))"
    " RETURNING rc.id"
    "), started AS ("
    " UPDATE messages SET sent_at = :now"
    " WHERE id = ANY(:started ::bigint[]) AND sent_at IS NULL RETURNING id"
    "), due AS ("
    " SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit FOR UPDATE SKIP LOCKED"
    ")"
    " UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = recipient_copies.attempts + 1"
    " FROM due WHERE recipient_copies.id = due.id AND recipient_copies.status = 'queued'"
    " RETURNING recipient_copies.id, recipient_copies.message_id, recipient_copies.address,"
    " recipient_copies.html_body, recipient_copies.text_body, recipient_copies.attempts"
)
_CONTEXT = (
    "SELECT m.id, m.subject, m.sender_name, m.sender_address, m.to_header, m.cc_header,"
    " m.message_id_header, m.created_at, mb.id, mb.smtp_host, mb.smtp_port, mb.smtp_security,"
    " mb.smtp_username, mb.smtp_password_encrypted, mb.is_demo"
    " FROM messages AS m LEFT OUTER JOIN mailbox_connections AS mb"
    " ON mb.id = m.mailbox_connection_id"
    " WHERE m.id = :message_id"
)


_TS = UTCDateTime()
_STATEMENTS = {
    "claim_sqlite": _CLAIM_SQLITE,
    "claim_postgresql": _CLAIM_POSTGRESQL,
    "sent": _SETTLE_SENT,
    "ended": _SETTLE_ENDED,
    "retry": _SETTLE_RETRY,
    "started": _MESSAGE_STARTED,
    "context": _CONTEXT,
    "round": _ROUND_POSTGRESQL,
    "unreserve": _UNRESERVE,
}
_TYPED = {"now": _TS, "next": _TS}


def _statement(sql: str) -> TextClause:
    """A textual statement whose timestamps bind through the models' own column type."""
    stmt = text(sql)
    named = set(re.findall(r"(?<!:):(\w+)", sql))
    typed = [bindparam(name, type_=type_) for name, type_ in _TYPED.items() if name in named]
    return stmt.bindparams(*typed) if typed else stmt


_SQL = {name: _statement(sql) for name, sql in _STATEMENTS.items()}


class SendQueue:
    """The claim and settle statements of one worker, on one dedicated connection.

    On SQLite the send path's statements go straight to sqlite3's connection, inside
    the transaction SQLAlchemy began: SQLAlchemy's execution layer costs several times
    the Python time of the SQL itself, time taken from the event loop (the worker's
    database thread holds the GIL meanwhile), and sqlite3 keeps each statement
    prepared. PostgreSQL's round is one statement whose time is the server's commit;
    it stays on SQLAlchemy, whose error handling keeps values out of the server's
    error text (``db._redact_server_detail``).
    """

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        dialect = conn.dialect
        self._sqlite = dialect.name == "sqlite"
        self._dbapi_error: type[Exception] = dialect.loaded_dbapi.Error
        # Timestamps as the ORM writes them (on SQLite, its text format).
        self._bind_ts = _TS.dialect_impl(dialect).bind_processor(dialect) or as_utc

    def round(
        self,
        worker_id: str,
        now: datetime,
        settlements: Sequence[Settlement],
        limit: int,
        *,
        messages_started: set[int],
        known_messages: Container[int],
        start: Sequence[int] = (),
        reserve: int = 0,
    ) -> Round:
        """Settle finished copies, start reserved ones (``start``), claim up to ``limit``
        more and reserve up to ``reserve`` more, in one transaction.

        Also returns the send context of each claimed or reserved copy's message not in
        ``known_messages``. On SQLite the transaction begins with the write lock (the
        connection's ``sqlite_immediate`` option) and waits for the disk only if it
        claims or reserves: outcomes and starts can be lost only with the machine,
        which ``tasks.Presence`` tells the recovering worker. On PostgreSQL the round
        is one statement, run in autocommit, always durable; it neither starts nor
        reserves (the server's crash cannot be told apart from a worker's without a
        table that a crash empties).
        """
        # Copies are settled in id order, the order the hit pipeline locks them in:
        # two transactions that take row locks in one order cannot deadlock.
        settlements = sorted(settlements, key=lambda s: s.copy_id)
        if not self._sqlite:
            assert not start and not reserve, "PostgreSQL rounds neither start nor reserve"
            with self.conn.begin():
                unstarted = [s for s in settlements if not s.started]
                if unstarted:
                    self._settle(worker_id, now, unstarted, messages_started)
                claimed = self._round_postgresql(
                    worker_id, now, [s for s in settlements if s.started], limit, messages_started
                )
                contexts = self._contexts_for(claimed, known_messages)
            return Round(claimed, set(), [], contexts)
        raw = self._driver()
        durable = limit > 0 or reserve > 0
        try:
            if not durable:
                # WAL without a sync at commit: lost only if the machine stops.
                self._run(raw, "PRAGMA synchronous=NORMAL")
            with self.conn.begin():
                self._settle(worker_id, now, settlements, messages_started)
                started = self._start(raw, worker_id, now, start)
                claimed = self._claim(worker_id, now, limit)
                reserved = self._reserve(raw, worker_id, now, reserve)
                contexts = self._contexts_for([*claimed, *reserved], known_messages)
        finally:
            if not durable:
                self._run(raw, "PRAGMA synchronous=FULL")
        return Round(claimed, started, reserved, contexts)

    def _contexts_for(
        self, copies: Iterable[ClaimedCopy], known_messages: Container[int]
    ) -> dict[int, SendContext]:
        missing = {c.message_id for c in copies if c.message_id not in known_messages}
        return self.contexts(missing) if missing else {}

    def _driver(self) -> Any:
        """The driver's own connection under this SQLAlchemy connection."""
        return self.conn.connection.driver_connection

    def _run(self, raw: Any, sql: str, params: Any = None, *, many: bool = False) -> Any:
        """Run one statement on the driver's connection; its errors as SQLAlchemy's."""
        try:
            if many:
                return raw.executemany(sql, params)
            return raw.execute(sql, params) if params is not None else raw.execute(sql)
        except self._dbapi_error as exc:
            raise DBAPIError.instance(
                sql,
                None,
                exc,
                self._dbapi_error,
                hide_parameters=True,
                dialect=self.conn.dialect,
            ) from exc

    def _round_postgresql(
        self,
        worker_id: str,
        now: datetime,
        settlements: Sequence[Settlement],
        limit: int,
        messages_started: set[int],
    ) -> list[ClaimedCopy]:
        started = {s.message_id for s in settlements if s.status == CopyStatus.SENT}
        started -= messages_started
        rows = self.conn.execute(
            _SQL["round"],
            {
                "ids": [s.copy_id for s in settlements],
                "statuses": [str(s.status) for s in settlements],
                "replies": [s.reply[:REPLY_MAX] for s in settlements],
                "nexts": [
                    (s.next_attempt_at or now) if s.status == CopyStatus.QUEUED else None
                    for s in settlements
                ],
                "givebacks": [int(s.release) for s in settlements],
                "started": sorted(started),
                "worker": worker_id,
                "now": now,
                "limit": max(limit, 0),
            },
        )
        messages_started.update(started)
        return sorted((ClaimedCopy(*row) for row in rows), key=lambda c: c.id)

    def contexts(self, message_ids: Iterable[int]) -> dict[int, SendContext]:
        """Send contexts within the caller's transaction."""
        contexts = {}
        for message_id in sorted(set(message_ids)):
            row = self.conn.execute(_SQL["context"], {"message_id": message_id}).first()
            if row is None:
                continue
            contexts[row[0]] = SendContext(
                message_id=row[0],
                subject=row[1],
                sender_name=row[2],
                sender_address=row[3],
                to_header=row[4],
                cc_header=row[5],
                message_id_header=row[6],
                created_at=as_utc(_read_timestamp(row[7])),
                mailbox_id=row[8],
                smtp_host=row[9] or "",
                smtp_port=row[10] or 0,
                smtp_security=row[11] or "",
                smtp_username=row[12] or "",
                smtp_password_encrypted=row[13] or "",
                is_demo=bool(row[14]),
                # Read once per message and pass, in the round's own transaction.
                attachments=tuple(attachments.files_of(self.conn, row[0])),
            )
        return contexts

    def claim(self, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
        """Claim within the caller's transaction (on SQLite begun IMMEDIATE)."""
        return self._claim(worker_id, now, limit)

    def settle(
        self,
        worker_id: str,
        now: datetime,
        settlements: Sequence[Settlement],
        messages_started: set[int] | None = None,
    ) -> None:
        """Settle within the caller's transaction (in copy id order, as ``round`` does)."""
        self._settle(worker_id, now, sorted(settlements, key=lambda s: s.copy_id), messages_started)

    def _claim(self, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
        if limit <= 0:
            return []
        params = {"worker": worker_id, "now": now, "limit": limit}
        if self._sqlite:
            params["now"] = self._bind_ts(now)
            rows = self._run(self._driver(), _CLAIM_SQLITE, params).fetchall()
        else:
            rows = self.conn.execute(_SQL["claim_postgresql"], params).all()
        return sorted((ClaimedCopy(*row) for row in rows), key=lambda c: c.id)

    def _reserve(self, raw: Any, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
        if limit <= 0:
            return []
        params = {"worker": worker_id, "now": self._bind_ts(now), "limit": limit}
        rows = self._run(raw, _RESERVE_SQLITE, params).fetchall()
        return sorted((ClaimedCopy(*row) for row in rows), key=lambda c: c.id)

    def _start(self, raw: Any, worker_id: str, now: datetime, copy_ids: Sequence[int]) -> set[int]:
        """Start reserved copies; return the ids of those still reserved by this worker
        (all of them, unless a message was deleted meanwhile)."""
        if not copy_ids:
            return set()
        params: dict[str, object] = {"worker": worker_id, "now": self._bind_ts(now)}
        params.update({f"i{n}": copy_id for n, copy_id in enumerate(copy_ids)})
        sql = _START_SQLITE.format(ids=", ".join(f":i{n}" for n in range(len(copy_ids))))
        return {row[0] for row in self._run(raw, sql, params).fetchall()}

    def _settle(
        self,
        worker_id: str,
        now: datetime,
        settlements: Sequence[Settlement],
        messages_started: set[int] | None,
    ) -> None:
        """Write each outcome; a message's first sent copy dates it (``messages.sent_at``).

        Only copies still claimed by this worker change. A copy another worker marked
        ``unknown`` while we were sending (our presence looked lost) still becomes
        ``sent`` when we know it was: the truth is better than the doubt.
        ``messages_started`` names the messages already dated, to spare the statement.
        A reserved copy never started only goes back to the queue.
        """
        if not settlements:
            return
        ts = self._bind_ts(now) if self._sqlite else now
        sent: list[dict[str, object]] = []
        ended: list[dict[str, object]] = []
        retry: list[dict[str, object]] = []
        unreserve: list[dict[str, object]] = []
        for s in settlements:
            row: dict[str, object] = {
                "copy_id": s.copy_id,
                "worker": worker_id,
                "reply": s.reply[:REPLY_MAX],
            }
            if not s.started:
                unreserve.append({"copy_id": s.copy_id, "worker": worker_id})
            elif s.status == CopyStatus.SENT:
                sent.append(row | {"now": ts})
            elif s.status == CopyStatus.QUEUED:
                next_at = s.next_attempt_at or now
                retry.append(
                    row
                    | {
                        "next": self._bind_ts(next_at) if self._sqlite else next_at,
                        "giveback": int(s.release),
                    }
                )
            else:
                ended.append(row | {"status": str(s.status)})
        started: set[int] = set()
        if sent:
            started = {s.message_id for s in settlements if s.status == CopyStatus.SENT}
            started -= messages_started or set()
        batches = [
            ("sent", sent),
            ("started", [{"now": ts, "message_id": m} for m in sorted(started)]),
            ("ended", ended),
            ("retry", retry),
            ("unreserve", unreserve),
        ]
        raw = self._driver() if self._sqlite else None
        for name, params in batches:
            if not params:
                continue
            if raw is not None:
                self._run(raw, _STATEMENTS[name], params, many=True)
            else:
                self.conn.execute(_SQL[name], params)
        if started and messages_started is not None:
            messages_started.update(started)


def _read_timestamp(value: object) -> datetime:
    """A timestamp from a textual statement: SQLite hands back its stored text."""
    if isinstance(value, str):
        return datetime.fromisoformat(value)
    assert isinstance(value, datetime)
    return value


def claim_copies(conn: Connection, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
    """Move up to ``limit`` due copies from queued to sending, in the caller's transaction.

    On SQLite the caller must hold the write lock (``sqlite_immediate``).
    """
    return SendQueue(conn).claim(worker_id, now, limit)


def settle_copies(
    conn: Connection, worker_id: str, now: datetime, settlements: Sequence[Settlement]
) -> None:
    """Write the outcome of each claimed copy, in the caller's transaction."""
    SendQueue(conn).settle(worker_id, now, settlements)


def load_send_contexts(conn: Connection, message_ids: Iterable[int]) -> dict[int, SendContext]:
    """What the worker needs to send each message's copies, in the caller's transaction."""
    return SendQueue(conn).contexts(message_ids)


def complete_outbox_entries(
    conn: Connection,
    message_ids: Iterable[int] | None,
    now: datetime,
    observers: Sequence[DeliveryObserver] = (),
) -> list[int]:
    """Close the send request of each message none of whose copies is pending any more;
    return the ids of the messages whose request this closed.

    In the same transaction, each such message that reached at least one recipient
    gets its Sent-folder copy queued (:func:`queue_sent_folder_copies`), and the
    ``observers`` hear how each request settled (webhooks): a crash after the commit
    loses nothing, a rollback tells nothing. ``None`` checks every open request (the
    periodic sweep).
    """
    pending = exists().where(
        _copies.c.message_id == _outbox.c.message_id,
        _copies.c.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]),
    )
    stmt = update(_outbox).where(_outbox.c.completed_at.is_(None), ~pending)
    if message_ids is not None:
        ids = list(set(message_ids))
        if not ids:
            return []
        stmt = stmt.where(_outbox.c.message_id.in_(ids))
    rows = conn.execute(stmt.values(completed_at=now).returning(_outbox.c.message_id))
    completed = sorted({message_id for (message_id,) in rows})
    queue_sent_folder_copies(conn, completed, now)
    if observers and completed:
        settled = settled_messages(conn, completed)
        for observer in observers:
            observer.on_messages_settled(conn, settled)
    return completed


def settled_messages(conn: Connection, message_ids: Sequence[int]) -> list[MessageSettled]:
    """How each of these send requests settled, copy by copy, for the observers."""
    found: dict[int, MessageSettled] = {}
    m, c = _messages, _copies
    for row in conn.execute(
        select(m.c.id, m.c.user_id, m.c.subject, m.c.message_id_header, m.c.sent_at).where(
            m.c.id.in_(list(message_ids)), m.c.user_id.is_not(None)
        )
    ):
        found[row.id] = MessageSettled(
            row.id, row.user_id, row.subject, row.message_id_header, row.sent_at, ()
        )
    copies: dict[int, list[CopyOutcome]] = {message_id: [] for message_id in found}
    for c_row in conn.execute(
        select(
            c.c.id, c.c.message_id, c.c.address, c.c.kind, c.c.status, c.c.smtp_reply, c.c.sent_at
        )
        .where(c.c.message_id.in_(list(found)))
        .order_by(c.c.message_id, c.c.id)
    ):
        copies[c_row.message_id].append(
            CopyOutcome(
                c_row.id, c_row.address, c_row.kind, c_row.status, c_row.smtp_reply, c_row.sent_at
            )
        )
    return [replace(found[i], copies=tuple(copies[i])) for i in sorted(found)]


def queue_sent_folder_copies(conn: Connection, message_ids: Sequence[int], now: datetime) -> None:
    """Queue the sender's own copy for the Sent folder of each message that was sent
    through a mailbox with IMAP and reached at least one recipient; once per message
    (a resent copy, or a second closing of its request, adds nothing)."""
    if not message_ids:
        return
    delivered = exists().where(
        _copies.c.message_id == _messages.c.id, _copies.c.status == CopyStatus.SENT
    )
    chosen = (
        select(
            _messages.c.id,
            _messages.c.mailbox_connection_id,
            literal(str(SentCopyStatus.PENDING)),
            literal(0),
            literal(now, type_=UTCDateTime()),
            literal(""),
            literal(""),
            literal(0),
            literal(now, type_=UTCDateTime()),
        )
        .join(_mailboxes, _mailboxes.c.id == _messages.c.mailbox_connection_id)
        .where(
            _messages.c.id.in_(list(message_ids)),
            _mailboxes.c.imap_host != "",
            _mailboxes.c.is_demo.is_(False),
            delivered,
        )
    )
    columns = [
        "message_id",
        "mailbox_connection_id",
        "status",
        "attempts",
        "next_attempt_at",
        "last_error",
        "folder",
        "replaced_count",
        "created_at",
    ]
    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    conn.execute(
        insert_(_sent_copies)
        .from_select(columns, chosen)
        .on_conflict_do_nothing(index_elements=["message_id"])
    )


def requeue_lost_claims(conn: Connection, worker_id: str, known: Collection[int]) -> int:
    """Put back in the queue this worker's claims and reservations it never started;
    return how many.

    ``known`` are the copies the worker has in flight, has finished or holds reserved:
    every other copy in ``sending`` under its id was claimed by a round whose answer
    was lost, so it never reached an SMTP server, and its attempt is given back; every
    other copy it reserved is simply no longer reserved.
    """
    mine = _copies.c.claimed_by == worker_id
    if known:
        mine = and_(mine, _copies.c.id.not_in(sorted(known)))
    claims = (
        update(_copies)
        .where(mine, _copies.c.status == CopyStatus.SENDING)
        .values(
            status=CopyStatus.QUEUED,
            claimed_by=None,
            claimed_at=None,
            attempts=_copies.c.attempts - 1,
        )
    )
    reservations = (
        update(_copies)
        .where(mine, _copies.c.status == CopyStatus.QUEUED)
        .values(claimed_by=None, claimed_at=None)
    )
    with conn.begin() if not conn.in_transaction() else contextlib.nullcontext():
        count = cast(CursorResult[Any], conn.execute(claims)).rowcount
        count += cast(CursorResult[Any], conn.execute(reservations)).rowcount
    return count


def sending_workers(conn: Connection, exclude: str) -> list[str]:
    """Ids of the workers that hold copies in ``sending`` or reserved, other than ``exclude``."""
    return [
        w
        for (w,) in conn.execute(
            select(_copies.c.claimed_by)
            .distinct()
            .where(
                _copies.c.status.in_([CopyStatus.SENDING, CopyStatus.QUEUED]),
                _copies.c.claimed_by.is_not(None),
                _copies.c.claimed_by != exclude,
            )
        )
        if w
    ]


def mark_orphans_unknown(
    conn: Connection,
    dead_workers: Sequence[str],
    lease_cutoff: datetime,
    now: datetime,
    reply: str,
    observers: Sequence[DeliveryObserver] = (),
    commits_survived: Collection[str] = (),
) -> int:
    """Copies in ``sending`` of dead workers, or claimed before the cutoff, become unknown;
    return how many.

    A dead worker's reserved copies go back to the queue if it is one of
    ``commits_survived`` (none of its commits can have been lost, so a copy it started
    is no longer reserved); otherwise they may have been started by a commit the crash
    took, and become unknown too.
    """
    orphan = _copies.c.claimed_at < lease_cutoff
    if dead_workers:
        orphan = or_(orphan, _copies.c.claimed_by.in_(list(dead_workers)))
    marked = conn.execute(
        update(_copies)
        .where(_copies.c.status == CopyStatus.SENDING, orphan)
        .values(status=CopyStatus.UNKNOWN, smtp_reply=reply[:REPLY_MAX])
    )
    count = cast(CursorResult[Any], marked).rowcount
    survived = [w for w in dead_workers if w in commits_survived]
    doubtful = [w for w in dead_workers if w not in commits_survived]
    reserved = _copies.c.status == CopyStatus.QUEUED
    if survived:
        conn.execute(
            update(_copies)
            .where(reserved, _copies.c.claimed_by.in_(survived))
            .values(claimed_by=None, claimed_at=None)
        )
    if doubtful:
        marked = conn.execute(
            update(_copies)
            .where(reserved, _copies.c.claimed_by.in_(doubtful))
            .values(status=CopyStatus.UNKNOWN, smtp_reply=reply[:REPLY_MAX])
        )
        count += cast(CursorResult[Any], marked).rowcount
    complete_outbox_entries(conn, None, now, observers)
    return count


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


def lease_cutoff(now: datetime, lease_seconds: float) -> datetime:
    return now - timedelta(seconds=lease_seconds)
