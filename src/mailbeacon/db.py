"""Engines, the session factory and the unit of work.

One unit of work per request and per job: a session whose transaction is
committed when the block succeeds and rolled back when it raises. Nothing
inside commits. What must happen only once the change is committed (wake the
outbox worker, tell the browsers, later deliver a webhook) is raised as a typed
event with :func:`after_commit` and handed to the dispatcher after the commit.

SQLite has one writer at a time. A transaction that reads and then writes in
SQLite's default deferred mode can fail at its first write with "database is
locked" (another writer committed since its read snapshot began, and waiting
cannot help). So a unit of work that may write starts with ``BEGIN IMMEDIATE``:
it takes the write lock first, and concurrent writers queue on the busy timeout
instead of failing. Read-only units (safe HTTP methods) begin deferred and
never block writers (WAL).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

# How long a SQLite writer waits for the write lock. A big send (a thousand
# recipients planned in one transaction) holds it for about a second; a
# request that waits longer than this answers 503 rather than hanging.
SQLITE_BUSY_TIMEOUT_MS = 30_000

_EVENTS = "mailbeacon.after_commit"

Dispatch = Callable[[list[object]], None]


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


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; synchronous=FULL makes every
    # commit durable (fsync of the WAL).
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cur.close()


def _disable_pysqlite_begin(dbapi_conn: Any, _record: Any) -> None:
    # pysqlite's own BEGIN handling defers the write lock and begins behind
    # SQLAlchemy's back; the "begin" listener below says how to begin instead.
    dbapi_conn.isolation_level = None


def _sqlite_begin(conn: Any) -> None:
    immediate = conn.get_execution_options().get("sqlite_immediate", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_engine(url: str, **kwargs: Any) -> Engine:
    url = normalise_url(url)
    # Statement parameters are email bodies and addresses: never in logs or errors.
    kwargs.setdefault("hide_parameters", True)
    if is_sqlite(url):
        engine = create_engine(url, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "connect", _disable_pysqlite_begin)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    kwargs.setdefault("pool_pre_ping", True)
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("connect_timeout", 3)
    return create_engine(url, connect_args=connect_args, **kwargs)


def after_commit(session: Session, event: object) -> None:
    """Hand ``event`` to the dispatcher once this unit of work has committed.

    Dropped if it rolls back. Events leave in the order they were raised.
    """
    session.info.setdefault(_EVENTS, []).append(event)


class Database:
    """One engine, its session factories and the unit of work."""

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = normalise_url(url)
        self.engine = make_engine(self.url, **engine_kwargs)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        # Connections of this engine that begin with the write lock (SQLite).
        self.writer_engine = self.engine.execution_options(sqlite_immediate=True)
        self._write_sessions = sessionmaker(self.writer_engine, expire_on_commit=False)
        self.dispatch: Dispatch = _drop_events

    @property
    def is_sqlite(self) -> bool:
        return is_sqlite(self.url)

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
                session.commit()
            except BaseException:
                session.rollback()
                session.info.pop(_EVENTS, None)
                raise
            events = session.info.pop(_EVENTS, None)
        if events:
            self.dispatch(events)

    def dispose(self) -> None:
        self.engine.dispose()


def _drop_events(events: list[object]) -> None:
    log.debug("no dispatcher: %d after-commit events dropped", len(events))


class BatchStatement:
    """A Core statement compiled once for one dialect, then run at driver level.

    For statements run with many rows per batch on the hot path (the hit
    pipeline): SQLAlchemy's execution layer costs more per row than the
    database does there. The statement is still written with Core, so there is
    one way of writing SQL; only its execution skips the per-row machinery.
    Values go through the column types' own bind processors (timestamps are
    stored on SQLite exactly as the ORM writes them).
    """

    def __init__(self, statement: Any, dialect: Any) -> None:
        compiled = statement.compile(dialect=dialect)
        self.sql: str = compiled.string
        names = list(compiled.positiontup) if dialect.positional else list(compiled.binds)
        self._positional = bool(dialect.positional)
        self._names = names
        self._processors = [
            compiled.binds[name].type.dialect_impl(dialect).bind_processor(dialect)
            for name in names
        ]

    def parameters(self, row: Any) -> Any:
        values = [
            value if proc is None or value is None else proc(value)
            for value, proc in zip((row[n] for n in self._names), self._processors, strict=True)
        ]
        return tuple(values) if self._positional else dict(zip(self._names, values, strict=True))

    def run(self, conn: Any, rows: list[Any]) -> None:
        """Execute once per row (executemany), inside the caller's transaction."""
        if rows:
            conn.exec_driver_sql(self.sql, [self.parameters(r) for r in rows])
