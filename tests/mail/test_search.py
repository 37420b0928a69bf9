"""The Mail tab's search through its indexes: the same results as a scan, whatever is typed.

SQLite finds candidates through an FTS5 trigram table and PostgreSQL through pg_trgm
(migration a3d5f7b9c1e2); both re-check with the LIKE the scan uses. Each search
here runs both ways and must find the same emails.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from alembic import command
from sqlalchemy import create_engine, delete, insert, inspect, text, update

from mailbeacon.db import Database, normalise_url
from mailbeacon.mail import reading
from mailbeacon.mail.reading import mail_page
from mailbeacon.migrate import alembic_config, upgrade
from mailbeacon.models import Message
from tests.conftest import POSTGRES_URL
from tests.factories.accounts import make_user
from tests.factories.mail import make_message

# (subject, To, Cc): FTS5 syntax, LIKE wildcards and escapes, quotes, non-ASCII.
EMAILS = [
    ('Say "hello" to Zoë', "Zoë Ünal <zoe@example.org>", ""),
    ("NEAR the station", "ann@example.org", "NEAR(ann bob)"),
    ("x* marks -the spot", "bob@example.com", "carl+tag@example.net"),
    ("100% off_sale", "dora_d@example.org", ""),
    ("Grüße aus Köln", '"Ölaf, Björn" <bjorn@example.de>', ""),
    ("it's ^caret: col:on {braces}", "eve@example.org", "AND OR NOT"),
    ("back\\slash / and 50/50", "fay@example.org", ""),
    ("ÉTÉ en fête", "gus@example.fr", ""),
    ("İstanbul ﬁles", "hal@example.tr", ""),
    ("plain", "ivy@example.org", "jo@example.org"),
]

SEARCHES = [
    '"hello"',
    '"',
    '""',
    'hello" to',
    "hello",
    "HELLO",
    "near",
    "NEAR(ann",
    "near(ann bob)",
    "x*",
    "*",
    "x* marks",
    "-the",
    "- the",
    "the -",
    "100%",
    "%",
    "%%",
    "_",
    "off_sale",
    "off%sale",
    "dora_d",
    "grüße",
    "GRÜSSE",
    "köln",
    "KÖLN",
    "ölaf",
    "Ölaf, Björn",
    "zoë",
    "ZOË",
    "zoe",
    "it's",
    "'",
    "^caret",
    "col:on",
    "{braces}",
    "and or not",
    "AND",
    "not",
    "back\\slash",
    "\\",
    "/",
    "50/50",
    "//",
    "été",
    "ÉTÉ",
    "fête",
    "i̇stanbul",
    "İstanbul",
    "ﬁles",
    "files",
    "example",
    "@example.org",
    "a",
    "ab",
    "zz",
    "nothing at all",
    "carl+tag",
    "+",
    "bob ann",
]


@pytest.fixture
def sally(database: Database) -> int:
    with database.unit_of_work() as s:
        user = make_user(s)
        for subject, to, cc in EMAILS:
            message, _ = make_message(s, user, recipients=())
            # Written after the insert: the update keeps the index in step too.
            message.subject, message.to_header, message.cc_header = subject, to, cc
        # Another user's email that matches everything must never show.
        other = make_user(s, "tom@example.com")
        theirs, _ = make_message(s, other, recipients=())
        theirs.subject = " ".join(subject for subject, _, _ in EMAILS)
        user_id = user.id
    return user_id


def _subjects(database: Database, user_id: int, q: str) -> set[str]:
    with database.sessions() as s:
        return {item.subject for item in mail_page(s, user_id, q=q, limit=200).items}


def _scanned(database: Database, user_id: int, q: str, monkeypatch: pytest.MonkeyPatch) -> set[str]:
    """What the search found before the indexes: no trigram candidates (SQLite), and no
    index for PostgreSQL's planner to use."""
    with monkeypatch.context() as m:
        m.setattr(reading, "_trigram_matches", lambda session, search: None)
        if database.is_sqlite:
            return _subjects(database, user_id, q)
        with database.sessions() as s:
            # Planner settings last until the end of this transaction only.
            s.execute(text("SET LOCAL enable_bitmapscan = off"))
            s.execute(text("SET LOCAL enable_indexscan = off"))
            return {item.subject for item in mail_page(s, user_id, q=q, limit=200).items}


def test_the_indexes_are_in_place(database: Database) -> None:
    names = set(inspect(database.engine).get_table_names())
    if database.is_sqlite:
        assert "messages_search" in names
        with database.engine.connect() as conn:
            triggers = set(
                conn.execute(
                    text("SELECT name FROM sqlite_master WHERE type = 'trigger'")
                ).scalars()
            )
        assert {
            "messages_search_insert",
            "messages_search_update",
            "messages_search_delete",
        } <= triggers
    else:
        indexes = {i["name"] for i in inspect(database.engine).get_indexes("messages")}
        assert "messages_search_trgm" in indexes


@pytest.mark.parametrize("q", SEARCHES)
def test_tricky_searches_find_what_a_scan_finds(
    database: Database, sally: int, q: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _subjects(database, sally, q) == _scanned(database, sally, q, monkeypatch)


def test_what_both_backends_find(database: Database, sally: int) -> None:
    def found(q: str) -> set[str]:
        return _subjects(database, sally, q)

    assert found('"hello"') == {'Say "hello" to Zoë'}
    assert found('"') == {'Say "hello" to Zoë', "Grüße aus Köln"}
    assert found("near(ann bob)") == {"NEAR the station"}  # text, not an FTS5 NEAR group
    assert found("x*") == {"x* marks -the spot"}  # not a prefix query
    assert found("*") == {"x* marks -the spot"}
    assert found("-the") == {"x* marks -the spot"}  # not a NOT
    assert found("and or not") == {"it's ^caret: col:on {braces}"}
    assert found("%") == {"100% off_sale"}  # a percent sign, not a wildcard
    assert found("_") == {"100% off_sale"}  # an underscore, not any character
    assert found("off%sale") == set()
    assert found("\\") == {"back\\slash / and 50/50"}
    assert found("50/50") == {"back\\slash / and 50/50"}
    assert found("köln") == {"Grüße aus Köln"}
    assert found("zoë") == {'Say "hello" to Zoë'}
    assert found("fête") == {"ÉTÉ en fête"}
    assert found("carl+tag") == {"x* marks -the spot"}  # Cc
    assert found("nothing at all") == set()
    assert len(found("@example.org")) == 6
    assert found("zz") == set()


def test_a_deleted_email_leaves_the_index(database: Database, sally: int) -> None:
    with database.unit_of_work() as s:
        s.execute(delete(Message).where(Message.subject == "plain"))
        s.execute(
            insert(Message).values(user_id=sally, subject="plain again", to_header="", cc_header="")
        )
    assert _subjects(database, sally, "plain") == {"plain again"}
    if database.is_sqlite:
        with database.engine.connect() as conn:
            # The external-content index agrees with its table (FTS5 integrity check).
            conn.execute(
                text("INSERT INTO messages_search (messages_search) VALUES ('integrity-check')")
            )


@pytest.fixture
def fresh_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty database of the backend under test, that the test migrates itself."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path}/fresh.db"
        return
    schema = f"mb_search_{uuid.uuid4().hex[:10]}"
    admin = create_engine(normalise_url(POSTGRES_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in POSTGRES_URL else "?"
    try:
        yield f"{POSTGRES_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def _indexed(database: Database) -> list[int] | None:
    """The emails SQLite's trigram table finds for "figures"; on PostgreSQL, whether the
    trigram index exists (as a list of nothing, or None)."""
    if not database.is_sqlite:
        names = {i["name"] for i in inspect(database.engine).get_indexes("messages")}
        return [] if "messages_search_trgm" in names else None
    if "messages_search" not in inspect(database.engine).get_table_names():
        return None
    with database.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT rowid FROM messages_search WHERE messages_search MATCH :q"),
                {"q": '"figures"'},
            ).scalars()
        )


def test_the_migration_indexes_emails_already_there(fresh_url: str) -> None:
    # Written at the revision before the search indexes, in that revision's columns.
    upgrade(fresh_url, "9e6b0c4d5a7f")
    database = Database(fresh_url)
    subject = "Quarterly figures for Ünal"
    try:
        with database.unit_of_work() as s:
            message_id = s.execute(
                insert(Message).values(subject=subject, to_header="", cc_header="")
            ).inserted_primary_key[0]
        upgrade(fresh_url, "a3d5f7b9c1e2")
        assert _indexed(database) == ([message_id] if database.is_sqlite else [])
        command.downgrade(alembic_config(fresh_url), "9e6b0c4d5a7f")
        assert _indexed(database) is None
        upgrade(fresh_url)
        assert _indexed(database) == ([message_id] if database.is_sqlite else [])
        with database.unit_of_work() as s:
            user_id = make_user(s).id
            # Not a searched column: the update trigger leaves the index alone.
            s.execute(update(Message).values(user_id=user_id))
        assert _subjects(database, user_id, "figures for") == {subject}
        assert _indexed(database) == ([message_id] if database.is_sqlite else [])
    finally:
        database.dispose()
