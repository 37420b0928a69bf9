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
unflushed commits cannot have been lost, and becomes ``unknown`` otherwise. On
SQLite a commit that did not wait is lost only with the machine (``tasks.Presence``
records its boot); on PostgreSQL only with the server, and the server's crash is
told by the worker's row in ``outbox_crash_markers`` (see "Crash markers" below).
"""

from __future__ import annotations

import contextlib
import json
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
    case,
    exists,
    func,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from mailbeacon.db import driver_error
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
    # A reserved copy whose start a round may have committed, its answer lost (never
    # begun by a lane): given back from `sending` too (``started`` False only).
    start_in_doubt: bool = False


@dataclass(frozen=True, slots=True)
class Round:
    """What one round of the worker got: copies claimed to send now, which of the
    reserved copies it asked to start did start, copies reserved for later, and the
    send context of each message new to the pass."""

    claimed: list[ClaimedCopy]
    started: set[int]
    reserved: list[ClaimedCopy]
    contexts: dict[int, SendContext]
    # PostgreSQL: the worker's crash marker was gone, and the round changed nothing
    # (the worker repairs its copies with ``repair_own_copies`` and runs it again).
    marker_missing: bool = False
    # Whether the round's commit waited for the disk with something written: every
    # earlier commit of the worker is then on disk too (the log is written in order).
    flushed: bool = False


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
    " RETURNING id, message_id, address, attempts"
)
# Reserved copies come back with the attempt that starting them will count.
_RESERVE_SQLITE = (
    "UPDATE recipient_copies SET claimed_by = :worker, claimed_at = :now"
    " WHERE id IN (SELECT id FROM recipient_copies"
    " WHERE status = 'queued' AND claimed_by IS NULL"
    " AND (next_attempt_at IS NULL OR next_attempt_at <= :now)"
    " ORDER BY next_attempt_at LIMIT :limit)"
    " AND +status = 'queued' AND +claimed_by IS NULL"
    " RETURNING id, message_id, address, attempts + 1"
)
# The bodies of the copies just claimed or reserved (kept apart from the copies' rows,
# which the send path updates three times each: models.message.CopyBody).
_BODIES_SQLITE = (
    "SELECT copy_id, html_body, text_body FROM recipient_copy_bodies"
    " WHERE copy_id IN (SELECT value FROM json_each(?))"
)
# A reserved copy starts only from `queued`. The one exception is a copy the worker
# names in ``{restart}``: it asked to start it in a round whose answer was lost, so
# the lane never began it, and `sending` there means that round committed: it starts
# now, counted once. Any other copy found `sending` is in flight (a stale entry of
# the worker's reserve, say, after another worker released and it reserved again):
# starting it would send it twice.
_START_SQLITE = (
    "UPDATE recipient_copies SET status = 'sending', claimed_at = :now,"
    " attempts = attempts + (status = 'queued')"
    " WHERE id IN ({ids}) AND claimed_by = :worker"
    " AND (status = 'queued' OR (status = 'sending' AND id IN ({restart})))"
    " RETURNING id"
)
_UNRESERVE = (
    "UPDATE recipient_copies SET claimed_by = NULL, claimed_at = NULL"
    " WHERE id = :copy_id AND claimed_by = :worker AND status = 'queued'"
)
# A reserved copy given back whose start a round may have committed with its answer
# lost: never begun by a lane, so it goes back to the queue from `sending` too, with
# that attempt given back.
_UNRESERVE_IN_DOUBT = (
    "UPDATE recipient_copies SET status = 'queued', claimed_by = NULL, claimed_at = NULL,"
    " attempts = attempts - CASE WHEN status = 'sending' THEN 1 ELSE 0 END"
    " WHERE id = :copy_id AND claimed_by = :worker AND status IN ('queued', 'sending')"
)
# A locking CTE runs exactly once. Written as "id IN (subquery)", PostgreSQL may
# rescan the subquery, and each rescan skips the rows the earlier ones locked: the
# UPDATE would then claim more rows than the LIMIT. Reserved copies (``claimed_by``
# set) are skipped. The filter and the order are those of the partial index
# ix_recipient_copies_due (migration d2f4a6c8e0b1), which holds the queued unreserved
# copies alone: the scan walks it in due order and stops at the limit. Through the
# status index PostgreSQL planned a bitmap scan, which read every entry a send had
# left behind in it, dead ones too, each time (1.3-1.5 ms for 600 queued copies after
# 9,000 sent, against 0.05 ms).
_DUE_POSTGRESQL = (
    " FROM recipient_copies"
    " WHERE status = 'queued' AND claimed_by IS NULL"
    " AND coalesce(next_attempt_at, '-infinity'::timestamptz) <= :now"
)
_DUE_ORDER_POSTGRESQL = "coalesce(next_attempt_at, '-infinity'::timestamptz), id"
_CLAIM_POSTGRESQL = (
    "WITH due AS (SELECT id"  # noqa: S608 (constants only)
    + _DUE_POSTGRESQL
    + " ORDER BY "
    + _DUE_ORDER_POSTGRESQL
    + " LIMIT :limit FOR UPDATE SKIP LOCKED"
    "), claimed AS ("
    " UPDATE recipient_copies"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = recipient_copies.attempts + 1"
    " FROM due WHERE recipient_copies.id = due.id AND recipient_copies.status = 'queued'"
    " RETURNING recipient_copies.id, recipient_copies.message_id, recipient_copies.address,"
    " recipient_copies.attempts"
    ") SELECT c.id, c.message_id, c.address, b.html_body, b.text_body, c.attempts"
    " FROM claimed AS c LEFT OUTER JOIN recipient_copy_bodies AS b ON b.copy_id = c.id"
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
# sent_at of their messages, the starts of reserved copies, and the next claims and
# reservations. Run in autocommit it is one network round trip, commit included. The
# sub-statements touch disjoint rows: the settled copies are 'sending' (or 'unknown')
# in the statement's snapshot, the started ones reserved by this worker, and the
# claimed and reserved ones queued and unreserved (a copy put back in the queue is
# claimable from the next round on).
#
# Nothing changes unless the worker's crash marker is there (or the round writes it,
# ``:establish``); see "Crash markers" below.
_SETTLE_AND_START_POSTGRESQL = (
    " outcome AS ("
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
    " FROM outcome AS o, marker"
    " WHERE marker.ok AND rc.id = o.id AND rc.claimed_by = :worker"
    " AND (rc.status = 'sending' OR (o.status = 'sent' AND rc.status = 'unknown'))"
    " RETURNING rc.id"
    "), started AS ("
    " UPDATE messages SET sent_at = :now"
    " WHERE id = ANY(:started ::bigint[]) AND sent_at IS NULL"
    " AND (SELECT ok FROM marker) RETURNING id"
    # Only from `queued`, or `sending` for the copies in :restart (see _START_SQLITE).
    "), begun AS ("
    " UPDATE recipient_copies SET status = 'sending', claimed_at = :now,"
    " attempts = attempts + CASE WHEN status = 'queued' THEN 1 ELSE 0 END"
    " WHERE id = ANY(:start ::bigint[]) AND claimed_by = :worker"
    " AND (status = 'queued' OR (status = 'sending' AND id = ANY(:restart ::bigint[])))"
    " AND (SELECT ok FROM marker)"
    " RETURNING id"
    ")"
)
_ROUND_TAIL_POSTGRESQL = (
    " UNION ALL SELECT 's', id, NULL, NULL, NULL, NULL, NULL FROM begun"
    " UNION ALL SELECT 'm', NULL, NULL, NULL, NULL, NULL, NULL FROM marker WHERE NOT ok"
)
# A round that claims or reserves: its commit waits for the disk, even where the
# server is set not to wait by default (then 'local': a lane's copy must never be
# able to fall back to the shared queue). Put together from constants only, hence
# the noqa.
_ROUND_POSTGRESQL = (
    "WITH marker AS ("  # noqa: S608
    " SELECT :establish OR EXISTS (SELECT 1 FROM outbox_crash_markers"
    " WHERE worker_id = :worker) AS ok,"
    " CASE WHEN current_setting('synchronous_commit') = 'off'"
    " THEN set_config('synchronous_commit', 'local', true) END AS durable"
    "), established AS ("
    " INSERT INTO outbox_crash_markers (worker_id) SELECT :worker WHERE :establish"
    " ON CONFLICT (worker_id) DO NOTHING"
    ")," + _SETTLE_AND_START_POSTGRESQL + ", due AS ("
    " SELECT id, coalesce(next_attempt_at, '-infinity'::timestamptz) AS due_at"
    + _DUE_POSTGRESQL
    + " AND (SELECT ok FROM marker)"
    " ORDER BY " + _DUE_ORDER_POSTGRESQL + " LIMIT :take FOR UPDATE SKIP LOCKED"
    # The rows `due` returns are locked and were checked again once locked: they are
    # still queued and unreserved. Checking the status again below would let the
    # planner walk every queued copy by the status index to find them.
    "), ranked AS ("
    " SELECT id, row_number() OVER (ORDER BY due_at, id) AS n FROM due"
    "), claimed AS ("
    " UPDATE recipient_copies AS rc"
    " SET status = 'sending', claimed_by = :worker, claimed_at = :now,"
    " attempts = rc.attempts + 1"
    " FROM ranked WHERE rc.id = ranked.id AND ranked.n <= :limit"
    " RETURNING rc.id, rc.message_id, rc.address, rc.attempts"
    # Reserved copies come back with the attempt that starting them will count.
    "), reserved AS ("
    " UPDATE recipient_copies AS rc SET claimed_by = :worker, claimed_at = :now"
    " FROM ranked WHERE rc.id = ranked.id AND ranked.n > :limit"
    " RETURNING rc.id, rc.message_id, rc.address, rc.attempts + 1 AS attempts"
    ")"
    " SELECT 'c', c.id, c.message_id, c.address, b.html_body, b.text_body, c.attempts"
    " FROM claimed AS c LEFT OUTER JOIN recipient_copy_bodies AS b ON b.copy_id = c.id"
    " UNION ALL SELECT 'r', r.id, r.message_id, r.address, b.html_body, b.text_body,"
    " r.attempts"
    " FROM reserved AS r LEFT OUTER JOIN recipient_copy_bodies AS b ON b.copy_id = r.id"
    + _ROUND_TAIL_POSTGRESQL
)
# A round that only settles and starts: its commit does not wait for the disk.
# set_config(..., true) is SET LOCAL, and the round is its own transaction, whose
# commit reads the setting. The marker's row is read (the CTE materialised) by the
# last line whatever happens, so the setting is always made.
_LAZY_ROUND_POSTGRESQL = (
    "WITH marker AS ("  # noqa: S608
    " SELECT EXISTS (SELECT 1 FROM outbox_crash_markers WHERE worker_id = :worker) AS ok,"
    " set_config('synchronous_commit', 'off', true) AS lazy"
    "),"
    + _SETTLE_AND_START_POSTGRESQL
    + " SELECT 's', id, NULL::bigint, NULL::varchar, NULL::text, NULL::text, NULL::integer"
    " FROM begun"
    " UNION ALL SELECT 'm', NULL, NULL, NULL, NULL, NULL, NULL FROM marker WHERE NOT ok"
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
    "lazy_round": _LAZY_ROUND_POSTGRESQL,
    "unreserve": _UNRESERVE,
    "unreserve_in_doubt": _UNRESERVE_IN_DOUBT,
}
_TYPED = {"now": _TS, "next": _TS}


def _statement(sql: str) -> TextClause:
    """A textual statement whose timestamps bind through the models' own column type."""
    stmt = text(sql)
    named = set(re.findall(r"(?<!:):(\w+)", sql))
    typed = [bindparam(name, type_=type_) for name, type_ in _TYPED.items() if name in named]
    return stmt.bindparams(*typed) if typed else stmt


_SQL = {name: _statement(sql) for name, sql in _STATEMENTS.items()}
# PostgreSQL's rounds in psycopg's own placeholders, run on the driver's connection
# (a literal "%" doubled, as SQLAlchemy's compiler does).
_PSYCOPG = {
    name: re.sub(r"(?<!:):(\w+)", r"%(\1)s", _STATEMENTS[name].replace("%", "%%"))
    for name in ("round", "lazy_round")
}


class SendQueue:
    """The claim and settle statements of one worker, on one dedicated connection.

    On SQLite the send path's statements go straight to sqlite3's connection, inside
    the transaction SQLAlchemy began: SQLAlchemy's execution layer costs several times
    the Python time of the SQL itself, time taken from the event loop (the worker's
    database thread holds the GIL meanwhile), and sqlite3 keeps each statement
    prepared. PostgreSQL's round is one statement, one round trip to the server, run
    on psycopg's connection for the same reason (0.6 ms of client CPU a round through
    SQLAlchemy, about 0.13 ms less without it); its errors are redacted as
    SQLAlchemy's handler would (``db.driver_error``).
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
        restart: Collection[int] = (),
        reserve: int = 0,
        establish: bool = False,
    ) -> Round:
        """Settle finished copies, start reserved ones (``start``), claim up to ``limit``
        more and reserve up to ``reserve`` more, in one transaction.

        A copy to start must be ``queued``; one found ``sending`` starts only if it is
        in ``restart``: those of ``start`` the worker asked to start in a round whose
        answer was lost.

        Also returns the send context of each claimed or reserved copy's message not in
        ``known_messages``. The transaction waits for the disk only if it claims or
        reserves: outcomes and starts can be lost only with the machine (SQLite, which
        ``tasks.Presence`` tells the recovering worker) or with the database server
        (PostgreSQL, which the worker's crash marker tells). On SQLite the transaction
        begins with the write lock (the connection's ``sqlite_immediate`` option). On
        PostgreSQL the round is one statement, run in autocommit; it changes nothing
        unless the worker's crash marker is there, or ``establish`` writes it.
        """
        # Copies are settled in id order, the order the hit pipeline locks them in:
        # two transactions that take row locks in one order cannot deadlock.
        settlements = sorted(settlements, key=lambda s: s.copy_id)
        if not self._sqlite:
            with self.conn.begin():
                unstarted = [s for s in settlements if not s.started]
                if unstarted:
                    self._settle(worker_id, now, unstarted, messages_started)
                got = self._round_postgresql(
                    worker_id,
                    now,
                    [s for s in settlements if s.started],
                    limit,
                    messages_started,
                    start=start,
                    restart=restart,
                    reserve=reserve,
                    establish=establish,
                )
                contexts = self._contexts_for([*got.claimed, *got.reserved], known_messages)
            return replace(got, contexts=contexts)
        raw = self._driver()
        durable = limit > 0 or reserve > 0
        try:
            if not durable:
                # WAL without a sync at commit: lost only if the machine stops.
                self._run(raw, "PRAGMA synchronous=NORMAL")
            with self.conn.begin():
                self._settle(worker_id, now, settlements, messages_started)
                started = self._start(raw, worker_id, now, start, restart)
                claimed = self._claim(worker_id, now, limit)
                reserved = self._reserve(raw, worker_id, now, reserve)
                contexts = self._contexts_for([*claimed, *reserved], known_messages)
        finally:
            if not durable:
                self._run(raw, "PRAGMA synchronous=FULL")
        return Round(claimed, started, reserved, contexts, flushed=bool(claimed or reserved))

    def _contexts_for(
        self, copies: Iterable[ClaimedCopy], known_messages: Container[int]
    ) -> dict[int, SendContext]:
        missing = {c.message_id for c in copies if c.message_id not in known_messages}
        return self.contexts(missing) if missing else {}

    def _driver(self) -> Any:
        """The driver's own connection under this SQLAlchemy connection."""
        return self.conn.connection.driver_connection

    def _run(self, raw: Any, sql: str, params: Any = None, *, many: bool = False) -> Any:
        """Run one statement on the driver's connection; its errors as SQLAlchemy's,
        the values kept out of their text as SQLAlchemy's own handling keeps them."""
        try:
            if many:
                return raw.executemany(sql, params)
            return raw.execute(sql, params) if params is not None else raw.execute(sql)
        except self._dbapi_error as exc:
            raise driver_error(sql, exc, self.conn.dialect) from exc

    def _round_postgresql(
        self,
        worker_id: str,
        now: datetime,
        settlements: Sequence[Settlement],
        limit: int,
        messages_started: set[int],
        *,
        start: Sequence[int],
        restart: Collection[int],
        reserve: int,
        establish: bool,
    ) -> Round:
        started = {s.message_id for s in settlements if s.status == CopyStatus.SENT}
        started -= messages_started
        limit, reserve = max(limit, 0), max(reserve, 0)
        lazy = not (limit or reserve or establish)
        params: dict[str, object] = {
            "ids": [s.copy_id for s in settlements],
            "statuses": [str(s.status) for s in settlements],
            "replies": [s.reply[:REPLY_MAX] for s in settlements],
            "nexts": [
                as_utc(s.next_attempt_at or now) if s.status == CopyStatus.QUEUED else None
                for s in settlements
            ],
            "givebacks": [int(s.release) for s in settlements],
            "started": sorted(started),
            "start": list(start),
            "restart": sorted(set(restart).intersection(start)),
            "worker": worker_id,
            # As the models' UTCDateTime binds it: a naive value is UTC, not the
            # session's time zone.
            "now": as_utc(now),
        }
        if not lazy:
            params.update(limit=limit, take=limit + reserve, establish=establish)
        raw = self._driver()
        rows = self._run(raw, _PSYCOPG["lazy_round" if lazy else "round"], params).fetchall()
        if any(row[0] == "m" for row in rows):
            return Round([], set(), [], {}, marker_missing=True)
        messages_started.update(started)
        claimed = sorted((ClaimedCopy(*row[1:]) for row in rows if row[0] == "c"), key=_by_id)
        reserved = sorted((ClaimedCopy(*row[1:]) for row in rows if row[0] == "r"), key=_by_id)
        begun = {row[1] for row in rows if row[0] == "s"}
        # A commit that writes nothing logged neither waits nor flushes: only claims and
        # reservations make sure of it.
        return Round(claimed, begun, reserved, {}, flushed=bool(claimed or reserved))

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
            raw = self._driver()
            return self._with_bodies(raw, self._run(raw, _CLAIM_SQLITE, params).fetchall())
        rows = self.conn.execute(_SQL["claim_postgresql"], params).all()
        return sorted((ClaimedCopy(*row) for row in rows), key=lambda c: c.id)

    def _reserve(self, raw: Any, worker_id: str, now: datetime, limit: int) -> list[ClaimedCopy]:
        if limit <= 0:
            return []
        params = {"worker": worker_id, "now": self._bind_ts(now), "limit": limit}
        return self._with_bodies(raw, self._run(raw, _RESERVE_SQLITE, params).fetchall())

    def _with_bodies(self, raw: Any, rows: Sequence[Any]) -> list[ClaimedCopy]:
        """SQLite: copies claimed or reserved (id, message, address, attempts), in id
        order, with their bodies."""
        if not rows:
            return []
        ids = json.dumps([row[0] for row in rows])
        bodies = {b[0]: b[1:] for b in self._run(raw, _BODIES_SQLITE, (ids,)).fetchall()}
        copies = []
        for copy_id, message_id, address, attempts in sorted(rows):
            html, text_ = bodies.get(copy_id, (None, None))
            copies.append(ClaimedCopy(copy_id, message_id, address, html, text_, attempts))
        return copies

    def _start(
        self,
        raw: Any,
        worker_id: str,
        now: datetime,
        copy_ids: Sequence[int],
        restart: Collection[int] = (),
    ) -> set[int]:
        """Start reserved copies; return the ids of those that started: still reserved
        by this worker and ``queued`` (or ``sending`` and in ``restart``)."""
        if not copy_ids:
            return set()
        params: dict[str, object] = {"worker": worker_id, "now": self._bind_ts(now)}
        params.update({f"i{n}": copy_id for n, copy_id in enumerate(copy_ids)})
        again = sorted(set(restart).intersection(copy_ids))
        params.update({f"r{n}": copy_id for n, copy_id in enumerate(again)})
        sql = _START_SQLITE.format(
            ids=", ".join(f":i{n}" for n in range(len(copy_ids))),
            # An empty IN () is valid in SQLite, and matches nothing.
            restart=", ".join(f":r{n}" for n in range(len(again))),
        )
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
        unreserve_in_doubt: list[dict[str, object]] = []
        for s in settlements:
            row: dict[str, object] = {
                "copy_id": s.copy_id,
                "worker": worker_id,
                "reply": s.reply[:REPLY_MAX],
            }
            if not s.started:
                (unreserve_in_doubt if s.start_in_doubt else unreserve).append(
                    {"copy_id": s.copy_id, "worker": worker_id}
                )
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
            ("unreserve_in_doubt", unreserve_in_doubt),
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


def _by_id(copy: ClaimedCopy) -> int:
    return copy.id


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


# ------------------------------------------------------------------ crash markers
#
# PostgreSQL. A worker starts reserved copies and writes outcomes in commits that do
# not wait for the disk; the server loses such a commit only if it crashes (or stops
# in immediate mode, which is a crash), never with the worker's process. Whether it
# did since a worker's row was written in ``outbox_crash_markers`` is told by the
# row itself: the table is unlogged, and PostgreSQL empties unlogged tables when it
# recovers from a crash, not after a clean shutdown (migration e7b9d1f3a5c6).
#
# The invariant: while a worker's row is there, every commit the worker made since
# writing it is there too, and its copies in the database agree with what it did.
# Hence, for a dead worker: row there, a copy still reserved was never started (a
# start would show), so it goes back to the queue; row gone, it may have been started
# by a lost commit, and becomes unknown. A live worker's round changes nothing once
# its row is gone (each sub-statement requires it), so that no outcome is written
# over a state the crash rolled back; the worker first repairs its copies from what
# it knows (``repair_own_copies``), which writes the row again in the same commit.
# Claims and reservations always wait for the disk, so that no copy a lane may begin
# can fall back to the shared queue.


class CrashMarkerLost(SQLAlchemyError):
    """A worker's crash marker went again right after it repaired its copies and wrote
    it: the round is given up, as one the database did not answer."""


def crash_markers_of(conn: Connection, worker_ids: Sequence[str]) -> set[str]:
    """Those of these workers whose crash marker is there (no crash since they wrote it)."""
    if not worker_ids:
        return set()
    rows = conn.execute(
        text("SELECT worker_id FROM outbox_crash_markers WHERE worker_id = ANY(:ids)"),
        {"ids": list(worker_ids)},
    )
    return {worker_id for (worker_id,) in rows}


def marked_workers(conn: Connection, exclude: str) -> list[str]:
    """Workers with a crash marker, other than ``exclude`` (to clear those found dead)."""
    rows = conn.execute(
        text("SELECT worker_id FROM outbox_crash_markers WHERE worker_id <> :me"), {"me": exclude}
    )
    return [worker_id for (worker_id,) in rows]


def drop_crash_markers(conn: Connection, worker_ids: Sequence[str]) -> None:
    """Forget dead workers' markers, once their copies are recovered (same transaction)."""
    if worker_ids:
        conn.execute(
            text("DELETE FROM outbox_crash_markers WHERE worker_id = ANY(:ids)"),
            {"ids": list(worker_ids)},
        )


def wait_for_the_disk(conn: Connection) -> None:
    """PostgreSQL: make the caller's transaction wait for the disk at commit, even where
    the session's default is not to (``SET LOCAL``); a stronger default is kept."""
    conn.execute(
        text(
            "SELECT CASE WHEN current_setting('synchronous_commit') = 'off'"
            " THEN set_config('synchronous_commit', 'local', true) END"
        )
    )


def flush_own_commits(conn: Connection, worker_id: str) -> bool:
    """PostgreSQL: make the caller's commit wait for the disk, and write a commit record
    to wait for (a transaction id is taken even if it writes nothing else); return
    whether the worker's crash marker is there.

    If it is, every commit the worker made since writing it is still there, and on disk
    once the caller's transaction has committed (the log is flushed in order).
    """
    wait_for_the_disk(conn)
    conn.execute(text("SELECT txid_current()"))
    return bool(crash_markers_of(conn, [worker_id]))


def repair_own_copies(
    conn: Connection,
    worker_id: str,
    *,
    unstarted: Collection[int],
    started: Collection[int],
) -> int:
    """PostgreSQL: make this live worker's copies agree with what it knows, and write its
    crash marker; in the caller's transaction, which must wait for the disk. Return how
    many copies were put back in the queue.

    ``unstarted`` are the copies it holds reserved and never started; ``started`` those
    it started whose outcome it has not written, or has written in a commit that may
    have been lost (the caller writes those outcomes again). A crash may have taken a
    start: such a copy is ``sending`` again, counted once. Any other copy under its id
    was claimed or reserved by a round whose answer was lost, so never started: it goes
    back to the queue (``requeue_lost_claims``). With the marker there, nothing was
    lost, and this changes only what a lost answer left.
    """
    if started:
        conn.execute(
            update(_copies)
            .where(
                _copies.c.claimed_by == worker_id,
                _copies.c.status.in_([CopyStatus.QUEUED, CopyStatus.SENDING]),
                _copies.c.id.in_(sorted(started)),
            )
            .values(
                status=CopyStatus.SENDING,
                attempts=_copies.c.attempts
                + case((_copies.c.status == CopyStatus.QUEUED, 1), else_=0),
            )
        )
    count = requeue_lost_claims(conn, worker_id, {*unstarted, *started})
    conn.execute(
        text(
            "INSERT INTO outbox_crash_markers (worker_id) VALUES (:worker)"
            " ON CONFLICT (worker_id) DO NOTHING"
        ),
        {"worker": worker_id},
    )
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
    """Whether a copy is queued, due and not reserved (reserved ones are their worker's)."""
    return (
        conn.execute(
            select(
                exists().where(
                    _copies.c.status == CopyStatus.QUEUED,
                    _copies.c.claimed_by.is_(None),
                    or_(_copies.c.next_attempt_at.is_(None), _copies.c.next_attempt_at <= now),
                )
            )
        ).scalar()
        is True
    )


def lease_cutoff(now: datetime, lease_seconds: float) -> datetime:
    return now - timedelta(seconds=lease_seconds)
