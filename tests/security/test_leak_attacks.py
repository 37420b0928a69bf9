"""What a statement carries (email bodies, addresses, names) never reaches a log line or
an error message when the statement fails: an operator's logs, or a crash report
sent elsewhere, must not become a copy of the users' mail.

SQLAlchemy's ``hide_parameters`` (db.py) keeps it from printing parameters; the
database server may still quote them in its own error text (PostgreSQL's
"Key (email)=(...) already exists"), which db.py redacts.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from mailbeacon.db import Database
from mailbeacon.models import Message, Organisation, User

BODY = "Dear Ann, the contract for Project Nightingale is attached"
ADDRESS = "ann.private@example.org"


def duplicate_address(session: Session) -> None:
    """A unique violation, flushed with a message body."""
    org_id = session.scalars(text("SELECT id FROM organisations")).first()
    session.add(User(organisation_id=org_id, email=ADDRESS, display_name=BODY))
    session.add(Message(user_id=None, subject=BODY, body_html=f"<p>{BODY}</p>"))
    session.flush()


def address_as_a_number(session: Session) -> None:
    """A value the column cannot take (PostgreSQL: a data exception quoting it)."""
    session.execute(
        text("INSERT INTO users (organisation_id, email, display_name) VALUES (:org, :e, :n)"),
        {"org": ADDRESS, "e": ADDRESS, "n": BODY},
    )


@pytest.mark.parametrize("fail", [duplicate_address, address_as_a_number])
def test_a_failing_statement_keeps_its_values_out_of_logs_and_errors(
    db_url: str, caplog: pytest.LogCaptureFixture, fail: Callable[[Session], None]
) -> None:
    # echo: every statement is logged, as an operator debugging the database would have it.
    database = Database(db_url, echo=True)
    try:
        with database.unit_of_work() as s:
            org = Organisation(name="Acme")
            s.add(org)
            s.flush()
            s.add(User(organisation_id=org.id, email=ADDRESS, display_name="Ann"))
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="sqlalchemy.engine"):
            try:
                with database.unit_of_work() as s:
                    fail(s)
            except DBAPIError as exc:
                error = exc
            else:
                raise AssertionError("the statement did not fail")
        logged = caplog.text
    finally:
        database.dispose()
    assert "INSERT INTO" in logged  # the statements were logged...
    assert "parameters hidden" in logged  # ...and their parameters were not
    shown = [str(error), repr(error), "".join(traceback.format_exception(error)), logged]
    for shown_text in shown:
        assert BODY not in shown_text
        assert ADDRESS not in shown_text


def test_a_failing_send_round_keeps_its_values_out_of_errors(pg_database: Database) -> None:
    # PostgreSQL's send rounds run on the driver's own connection, outside SQLAlchemy's
    # execution (mail.queue.SendQueue): their errors are redacted there. An id the
    # server cannot read as a number comes back quoted in its error text.
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.mail import queue
    from mailbeacon.models import CopyStatus

    bad = queue.Settlement(ADDRESS, 1, CopyStatus.SENT, BODY)  # type: ignore[arg-type]
    with pg_database.engine.connect() as conn:
        send = queue.SendQueue(conn.execution_options(isolation_level="AUTOCOMMIT"))
        with pytest.raises(DBAPIError) as raised:
            send.round("w1", utcnow(), [bad], 0, messages_started=set(), known_messages=())
    error = raised.value
    assert "SQLSTATE 22P02" in str(error)
    for shown_text in (str(error), repr(error), "".join(traceback.format_exception(error))):
        assert BODY not in shown_text
        assert ADDRESS not in shown_text


@pytest.mark.parametrize(
    ("rows", "state"),
    [
        ([(1, ADDRESS), (1, BODY)], "duplicate key"),  # DETAIL: Key (id)=(1) already exists
        ([(2, BODY + ADDRESS)], "SQLSTATE 22001"),  # CONTEXT: ... column title: "<the value>"
    ],
)
def test_a_failing_bulk_load_keeps_its_values_out_of_errors(
    pg_database: Database, rows: list[tuple[int, str]], state: str
) -> None:
    # The hit pipeline's events and the notifications go in with COPY on PostgreSQL,
    # outside SQLAlchemy's execution (db.copy_rows): the server quotes the row it
    # refused, in its DETAIL and CONTEXT.
    from mailbeacon.db import copy_rows

    with pg_database.engine.connect() as conn:
        conn.exec_driver_sql("CREATE TEMP TABLE bulk (id integer PRIMARY KEY, title varchar(60))")
        with pytest.raises(DBAPIError) as raised:
            copy_rows(conn, "bulk", ("id", "title"), rows)
    error = raised.value
    assert state in str(error), str(error)
    for shown_text in (str(error), repr(error), "".join(traceback.format_exception(error))):
        assert BODY not in shown_text
        assert ADDRESS not in shown_text
        assert "(id)=(1)" not in shown_text


def test_a_bulk_load_that_loses_its_server_drops_the_connection(pg_database: Database) -> None:
    from sqlalchemy.exc import OperationalError

    from mailbeacon.db import copy_rows

    with pg_database.engine.connect() as conn:
        pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with pg_database.engine.connect() as admin:
            admin.exec_driver_sql(f"SELECT pg_terminate_backend({int(pid or 0)})")
        with pytest.raises(OperationalError) as raised:
            copy_rows(conn, "organisations", ("name",), [("Acme",)])
        assert raised.value.connection_invalidated
        # As SQLAlchemy leaves a connection a statement found gone: the next one
        # reconnects instead of failing on the dead one.
        assert conn.invalidated
        conn.rollback()
        assert conn.exec_driver_sql("SELECT 1").scalar() == 1
