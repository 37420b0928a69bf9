"""Engines, the session factory and the unit of work.

One unit of work per request and per job: a session whose transaction is
committed when the block succeeds and rolled back when it raises. Nothing
inside commits. What must happen only once the change is committed (wake the
outbox worker, tell the browsers, later deliver a webhook) is raised as a typed
event with :func:`after_commit` and handed to the dispatcher after the commit.
What another domain must record in the same transaction is raised with
:func:`in_transaction` and handed to the observers just before the commit.

SQLite has one writer at a time. A transaction that reads and then writes in
SQLite's default deferred mode can fail at its first write with "database is
locked" (another writer committed since its read snapshot began, and waiting
cannot help). So a unit of work that may write starts with ``BEGIN IMMEDIATE``:
it takes the write lock first, and concurrent writers wait for it (asking again
every few milliseconds, up to the busy timeout) instead of failing. Read-only
units (safe HTTP methods) begin deferred and never block writers (WAL).
"""

from __future__ import annotations

import json
import logging
import operator
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    DateTime,
    Engine,
    String,
    Text,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    literal_column,
    select,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect, ExceptionContext, make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, StatementError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.types import NullType

from mailbeacon.config import DEFAULT_SQLITE_CACHE_MB

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long a SQLite writer waits for the write lock. A big send (a thousand
# recipients planned in one transaction) holds it for about a second; a
# request that waits longer than this answers 503 rather than hanging.
SQLITE_BUSY_TIMEOUT_MS = 30_000
# While another connection holds it, a writer asks for the lock again this often (ms).
SQLITE_BEGIN_POLL_MS = 2

_EVENTS = "mailbeacon.after_commit"
_OBSERVED = "mailbeacon.in_transaction"

Dispatch = Callable[[list[object]], None]
Observe = Callable[[Session, list[object]], None]


def normalise_url(url: str) -> str:
    """Accept plain `postgresql://` URLs and pick the psycopg 3 driver for them."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def describe_url(url: str) -> str:
    """The database URL as an operator may see it: no password."""
    return make_url(url).render_as_string(hide_password=True)


def is_unreachable(exc: BaseException) -> bool:
    """Whether a database call failed because the database is away (or busy past waiting),
    as opposed to refusing the statement."""
    if isinstance(exc, OperationalError | InterfaceError | OSError | TimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _private_sqlite_files(dbapi_conn: Any, _record: Any) -> None:
    """Keep the database file and its -wal and -shm readable by their owner only.

    SQLite creates the database file 0644 (less the umask) and gives the -wal and
    -shm files it creates later the database file's mode; so narrowing the
    database file here, before WAL mode is entered below, covers the files made
    from now on, and existing ones (an older install) are narrowed as well.
    """
    for row in dbapi_conn.execute("PRAGMA database_list").fetchall():
        path = row[2]
        if not path:  # in memory, or a temporary database
            continue
        for name in (path, f"{path}-wal", f"{path}-shm", f"{path}-journal"):
            try:
                mode = stat.S_IMODE(os.stat(name).st_mode)
                if mode & 0o077:
                    os.chmod(name, mode & 0o600)
            except FileNotFoundError:
                continue
            except PermissionError:  # another user's file: opening it was their choice
                log.warning("cannot make %s private to its owner", name)


def _sqlite_pragmas(cache_mb: int) -> Callable[[Any, Any], None]:
    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        # WAL lets readers run beside the single writer; synchronous=FULL makes every
        # commit durable (fsync of the WAL).
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=FULL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # Negative: a size in KiB rather than in pages (Settings.SQLITE_CACHE_MB says why).
        cur.execute(f"PRAGMA cache_size=-{int(cache_mb) * 1024}")
        cur.close()

    return on_connect


def _disable_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own BEGIN handling defers the write lock and begins behind
    # SQLAlchemy's back; the "begin" listener below says how to begin instead.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    if not conn.get_execution_options().get("sqlite_immediate", False):
        conn.exec_driver_sql("BEGIN")
        return
    raw = conn.connection.driver_connection
    restore = f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}"
    try:
        raw.execute(f"PRAGMA busy_timeout={SQLITE_BEGIN_POLL_MS}")
        got = _poll_write_lock(raw, SQLITE_BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error:
        got = False  # the statements below raise it, as SQLAlchemy raises any statement's
    try:
        if not got:
            # Not a busy lock, or busy past the timeout: once more as SQLAlchemy runs
            # a statement, so that the error is raised as any statement's is.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    finally:
        try:
            raw.execute(restore)
        except sqlite3.Error:
            # Never back in the pool with a 2 ms timeout: once more through SQLAlchemy,
            # which raises what it meets as its own (and drops a connection it finds gone).
            conn.exec_driver_sql(restore)


def _poll_write_lock(raw: sqlite3.Connection, seconds: float) -> bool:
    """BEGIN IMMEDIATE, tried again every SQLITE_BEGIN_POLL_MS while another connection
    writes; False if it failed otherwise or the time ran out.

    SQLite's own busy handler sleeps longer and longer between tries, up to 100 ms,
    and the lock goes to whichever connection asks first once it is free. The hit
    consumer begins its next batch a few milliseconds after it commits one, so a
    writer on that handler missed gap after gap: during a catch-up one small write in
    ten waited half a second or more, one 2.8 s (bench/README.md, the consumer's
    sixth round).
    """
    deadline = time.monotonic() + seconds
    while True:
        try:
            raw.execute("BEGIN IMMEDIATE")
            return True
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != sqlite3.SQLITE_BUSY:
                return False
        if time.monotonic() >= deadline:
            return False


def _redact_server_detail(context: ExceptionContext) -> None:
    """Keep the values of a failed statement out of PostgreSQL's error text too.

    ``hide_parameters`` keeps SQLAlchemy from printing the parameters, but the
    server writes some of them into its own message: the DETAIL of a constraint
    violation ("Key (email)=(ann@example.org) already exists", "Failing row
    contains (...)") and the text of a data exception ('invalid input syntax for
    type integer: "..."'). What the error text keeps is the primary message of
    the condition (it names constraints, tables and columns, never values), or
    for data exceptions only the condition's name and SQLSTATE. The full
    diagnostics stay on the driver's exception (``orig.diag``) for code that asks.
    """
    redact_server_detail(context.original_exception, context.sqlalchemy_exception)


def redact_server_detail(orig: BaseException, wrapped: BaseException | None) -> None:
    """``_redact_server_detail`` for an error raised outside SQLAlchemy's execution
    (a statement run on the driver's own connection), wrapped by the caller."""
    diag = getattr(orig, "diag", None)
    if diag is None:
        return
    state = diag.sqlstate or ""
    if state.startswith("22") or not diag.message_primary:
        text = f"{type(orig).__name__} (SQLSTATE {state or 'unknown'})"
    else:
        text = diag.message_primary
    orig.args = (text,)
    if wrapped is not None:
        wrapped.args = (f"({type(orig).__module__}.{type(orig).__name__}) {text}",)


def driver_error(
    sql: str, orig: Exception, dialect: Dialect, *, connection_invalidated: bool = False
) -> StatementError:
    """A driver's error from a statement run on its own connection, as SQLAlchemy
    would raise it (``IntegrityError``, ``OperationalError``...), its values hidden and
    the server's quoting of them redacted."""
    wrapped = DBAPIError.instance(
        sql,
        None,
        orig,
        dialect.loaded_dbapi.Error,
        hide_parameters=True,
        connection_invalidated=connection_invalidated,
        dialect=dialect,
    )
    redact_server_detail(orig, wrapped)
    return wrapped


def make_engine(
    url: str, *, sqlite_cache_mb: int = DEFAULT_SQLITE_CACHE_MB, **kwargs: Any
) -> Engine:
    url = normalise_url(url)
    # Statement parameters are email bodies and addresses: never in logs or errors.
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _private_sqlite_files)
        event.listen(engine, "connect", _sqlite_pragmas(sqlite_cache_mb))
        event.listen(engine, "connect", _disable_pysqlite_begin)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 3)
    engine = create_engine(url, connect_args=connect_args, **kwargs)
    event.listen(engine, "handle_error", _redact_server_detail)
    return engine


def after_commit(session: Session, event: object) -> None:
    """Hand ``event`` to the dispatcher once this unit of work has committed.

    Dropped if it rolls back. Events leave in the order they were raised.
    """
    session.info.setdefault(_EVENTS, []).append(event)


def in_transaction(session: Session, event: object) -> None:
    """Hand ``event`` to the in-transaction observers before this unit of work commits.

    What they write commits or rolls back with the change the event reports. Events are
    observed in the order they were raised, including those an observer raises.
    """
    session.info.setdefault(_OBSERVED, []).append(event)


class Database:
    """One engine, its session factories and the unit of work."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalise_url(url)
        # make_engine's arguments, sqlite_cache_mb among them.
        self.engine = make_engine(self.url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Connections of this engine that begin with the write lock (SQLite).
        self.writer_engine = self.engine.execution_options(sqlite_immediate=True)
        self._write_sessions = sessionmaker(self.writer_engine, expire_on_commit=False)
        self.dispatch: Dispatch = _drop_events
        self.observe: Observe = _ignore_observed

    @property
    def is_sqlite(self) -> bool:
        # The engine's dialect, not the URL parsed again: the outbox worker asks twice
        # per round.
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def unit_of_work(self, *, immediate: bool = True) -> Iterator[Session]:
        """One session, committed if the block succeeds and rolled back if it raises; then
        the events raised with :func:`after_commit` go to the dispatcher.

        ``immediate=False`` begins without the write lock on SQLite: for units that
        only read, or whose first statement is a write (see the module's docstring).
        """
        factory = self._write_sessions if immediate else self.sessions
        with factory() as session:
            try:
                yield session
                while observed := session.info.pop(_OBSERVED, None):
                    self.observe(session, observed)
                session.commit()
            except BaseException:
                session.rollback()
                session.info.pop(_EVENTS, None)
                session.info.pop(_OBSERVED, None)
                raise
            events = session.info.pop(_EVENTS, None)
        if events:
            self.dispatch(events)

    def dispose(self) -> None:
        self.engine.dispose()


def _drop_events(events: list[object]) -> None:
    log.debug("no dispatcher: %d after-commit events dropped", len(events))


def _ignore_observed(_session: Session, events: list[object]) -> None:
    log.debug("no observers: %d in-transaction events ignored", len(events))


class BatchStatement:
    """A Core statement compiled once for one dialect, then run at driver level.

    For statements run with many rows per batch on the hot path (the hit
    pipeline): SQLAlchemy's execution layer costs more per row than the
    database does there. The statement is still written with Core, so there is
    one way of writing SQL; only its execution skips the per-row machinery.
    Rows come as tuples in the order of ``columns`` (the statement's bound
    parameter names); values go through the column types' own bind processors,
    except timestamps on SQLite, which are formatted directly into the text
    SQLAlchemy's SQLite dialect stores (the ORM reads them back unchanged).
    """

    def __init__(self, statement: Any, dialect: Any, columns: Sequence[str]) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        names = list(compiled.positiontup) if dialect.positional else list(compiled.binds)
        missing = set(names) - set(columns)
        assert not missing, f"columns lack bound parameters {missing}"
        self._positional = bool(dialect.positional)
        self._names = names
        self._pick = operator.itemgetter(*(columns.index(n) for n in names))
        self._convert: list[tuple[int, Callable[[Any], Any]]] = []
        for index, name in enumerate(names):
            type_ = compiled.binds[name].type
            if dialect.name == "sqlite" and _is_timestamp(type_):
                self._convert.append((index, _sqlite_timestamp))
                continue
            proc = type_.dialect_impl(dialect).bind_processor(dialect)
            if proc is not None:
                self._convert.append((index, proc))

    def parameters(self, row: Sequence[Any]) -> Any:
        picked = self._pick(row)
        values = list(picked) if len(self._names) > 1 else [picked]
        for index, convert in self._convert:
            value = values[index]
            if value is not None:
                values[index] = convert(value)
        return tuple(values) if self._positional else dict(zip(self._names, values, strict=True))

    def run(self, conn: Any, rows: Sequence[Sequence[Any]]) -> None:
        """Execute once per row (executemany), inside the caller's transaction."""
        if rows:
            conn.exec_driver_sql(self.sql, [self.parameters(r) for r in rows])


def _is_timestamp(type_: Any) -> bool:
    """A DateTime column, or a type decorating one (the models' UTCDateTime)."""
    return isinstance(type_, DateTime) or isinstance(getattr(type_, "impl", None), DateTime)


# Formatted timestamps by value: a batch writes each of its times several times (the
# event, its copy's and its email's figures) and one recording time for every row.
_TIMESTAMPS: dict[datetime, str] = {}
_TIMESTAMPS_KEPT = 50_000


def _sqlite_timestamp(value: datetime) -> str:
    # Equal aware values are the same instant, which is all the text says (in UTC).
    text = _TIMESTAMPS.get(value)
    if text is None:
        if len(_TIMESTAMPS) >= _TIMESTAMPS_KEPT:
            _TIMESTAMPS.clear()
        text = _TIMESTAMPS[value] = _format_timestamp(value)
    return text


def _format_timestamp(value: datetime) -> str:
    # As UTCDateTime stores it: naive values are UTC already, aware ones are turned
    # to UTC. isoformat is several times faster than strftime, and on a naive value
    # with microseconds it is exactly SQLAlchemy's SQLite storage format.
    if value.tzinfo is UTC:
        return value.isoformat(" ", "microseconds")[:26]  # without "+00:00"
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.isoformat(" ", "microseconds")


# ------------------------------------------------------------------ a batch of ids as one parameter


def in_list(column: Any, name: str, dialect: Dialect) -> Any:
    """``column IN <the values of one bound parameter>``: a whole batch's ids in one
    statement, compiled once (an IN list of literals is expanded, and compiled, again for
    every execution, and on SQLite must be cut to stay under the parameter limit).

    The parameter is one string (:func:`list_value`): an array literal on PostgreSQL,
    a JSON array on SQLite.
    """
    if dialect.name == "postgresql":
        # An untyped parameter cast straight to an array type (no length): the server
        # reads the string as that array when planning, a constant it probes with a
        # hash table or an index. Cast from a typed text, or to varchar(32)[], the
        # array is computed while running and compared value by value with every row
        # scanned: 80 s for 5,000 uids against 20,000 events, where this takes 8 ms.
        element = Text() if isinstance(column.type, String) else BigInteger()
        array = sql_cast(bindparam(name, type_=NullType()), postgresql.ARRAY(element))
        return column == any_(array)
    values = func.json_each(bindparam(name, type_=String())).table_valued("value")
    return column.in_(select(values.c.value))


def list_value(dialect: Dialect, values: Sequence[int | str]) -> str:
    """The values of an :func:`in_list` parameter: integers, or strings that need no
    quoting in either form (hit uids are hex digits)."""
    if dialect.name == "postgresql":
        return pg_array(values)
    return json.dumps(list(values))


def json_rows(name: str, dialect: Dialect, **columns: Any) -> Any:
    """A derived table of the rows in one bound parameter, a JSON array of arrays
    (:func:`json_rows_value`): ``columns`` name each position and give its type, in order.

    For a batch's lookups keyed by more than one value (a copy and a text of any
    characters), which an array literal of :func:`in_list` cannot carry.
    """
    names = list(columns)
    if dialect.name == "postgresql":
        source = func.json_array_elements(
            sql_cast(bindparam(name, type_=NullType()), postgresql.JSON)
        ).table_valued("value", name=f"{name}_rows")
        # ->> gives text: cast back to the column's type, so that the comparison with
        # the column is the column's own (an index on it is usable).
        picked: list[Any] = [
            sql_cast(literal_column(f"{name}_rows.value ->> {n}"), columns[key])
            for n, key in enumerate(names)
        ]
    else:
        source = func.json_each(bindparam(name, type_=String())).table_valued(
            "value", name=f"{name}_rows"
        )
        picked = [
            literal_column(f"json_extract({name}_rows.value, '$[{n}]')", columns[key])
            for n, key in enumerate(names)
        ]
    labelled = (c.label(key) for c, key in zip(picked, names, strict=True))
    return select(*labelled).select_from(source).subquery(f"{name}_lookups")


def json_rows_value(rows: Iterable[Sequence[int | str | None]]) -> str:
    """The value of a :func:`json_rows` parameter."""
    return json.dumps([list(r) for r in rows], ensure_ascii=False)


def copy_rows(
    conn: Any,
    table: str,
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    meanwhile: Callable[[], T] | None = None,
) -> T | None:
    """PostgreSQL: rows into a table through COPY, on the connection's own transaction.

    ``meanwhile`` runs once the rows are written, before the COPY's end is sent: the
    server is still storing them (each row costs it more than it costs to write), so
    work that needs no statement is done while it does; its result is returned.

    For the hot path's bulk inserts: an executemany is one statement per row on the
    server and about 25 us of client CPU per row in psycopg; COPY is one stream.
    Timestamps must be aware: a naive one would be read in the session's time zone.
    COPY is not a statement SQLAlchemy runs, so its errors are raised here as
    SQLAlchemy raises a statement's (an ``IntegrityError`` for a key stored twice, an
    ``OperationalError`` when the server is away): what the callers tell apart.
    """
    sql = f"COPY {table} ({', '.join(columns)}) FROM STDIN"
    dbapi = conn.dialect.loaded_dbapi
    driver = conn.connection.driver_connection
    assert driver is not None
    try:
        with driver.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
            result = meanwhile() if meanwhile is not None else None
    except dbapi.Error as exc:
        away = conn.dialect.is_disconnect(exc, conn.connection.dbapi_connection, None)
        # The server quotes the row it refused (DETAIL, CONTEXT): addresses, subjects.
        wrapped = driver_error(sql, exc, conn.dialect, connection_invalidated=away)
        if away:
            conn.invalidate(exc)  # as SQLAlchemy does for a statement's lost connection
        raise wrapped from exc
    return result


def pg_columns(rows: Iterable[Sequence[Any]]) -> tuple[str, ...]:
    """Rows as one :func:`pg_array` per column: the parameters of a statement joined to
    ``unnest`` of them."""
    return tuple(pg_array(c) for c in zip(*rows, strict=True))


def pg_array(values: Iterable[int | str | datetime | None]) -> str:
    """An array literal for PostgreSQL (cast in the statement to its type).

    psycopg adapts a list element by element in Python, which for the few thousand
    values of a batch costs more than the statement; one string costs next to
    nothing. For integers, timestamps (naive ones are UTC, as everything stored is),
    NULL and strings that need no quoting only.
    """
    return (
        "{"
        + ",".join(
            "NULL"
            if v is None
            else (v.isoformat() if v.tzinfo else v.isoformat() + "+00:00")
            if isinstance(v, datetime)
            else str(v)
            for v in values
        )
        + "}"
    )
