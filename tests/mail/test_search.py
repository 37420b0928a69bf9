"""The Mail tab's search through its indexes: the same results as a scan, whatever is typed.

SQLite finds candidates through an FTS5 trigram table (migration a3d5f7b9c1e2) and
re-checks them with the LIKE the scan uses; PostgreSQL matches the same LIKE on a
lowered copy of the searched text, kept by a trigger and indexed with pg_trgm
(migration d6a8c0e2f4b5). Each search here runs both ways and must find the same
emails.
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
        indexes = {i["name"] for i in inspect(database.engine).get_indexes("messages_search_text")}
        assert "messages_search_text_trgm" in indexes
        # Moved from messages by d6a8c0e2f4b5: nothing searches that expression any more.
        on_messages = {i["name"] for i in inspect(database.engine).get_indexes("messages")}
        assert "messages_search_trgm" not in on_messages


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
    # Two characters: no trigram, so a scan (of the lowered copy on PostgreSQL).
    assert found("50") == {"back\\slash / and 50/50"}  # not the other user's email
    assert found("ÖL") == {"Grüße aus Köln"}
    assert found("+t") == {"x* marks -the spot"}  # Cc
    assert found("_d") == {"100% off_sale"}  # To, and an underscore, not any character


def _pages(database: Database, user_id: int, q: str, limit: int) -> list[str]:
    """Every page of a search, newest first, following the older cursor."""
    subjects: list[str] = []
    before = None
    with database.sessions() as s:
        while True:
            page = mail_page(s, user_id, q=q, before=before, limit=limit)
            subjects += [item.subject for item in page.items]
            if page.older_cursor is None:
                return subjects
            before = page.older_cursor


@pytest.mark.parametrize("q", ["@e", "e", "o"])
def test_short_searches_page_newest_first_like_a_scan(
    database: Database, sally: int, q: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    newest_first = [subject for subject, _, _ in reversed(EMAILS)]
    expected = [s for s in newest_first if s in _scanned(database, sally, q, monkeypatch)]
    assert len(expected) >= 7  # enough for three pages of three
    assert _pages(database, sally, q, limit=3) == expected


def test_postgresql_search_text_follows_the_emails(database: Database, sally: int) -> None:
    """The trigger keeps messages_search_text equal to what the search matched on
    messages before it (d6a8c0e2f4b5): inserts, updates of the searched columns, of the
    owner and of preview, and deletes."""
    if database.is_sqlite:
        pytest.skip("PostgreSQL only")
    with database.unit_of_work() as s:
        other = make_user(s, "uma@example.com").id
        s.execute(update(Message).where(Message.subject == "plain").values(subject="Plain AGAIN"))
        s.execute(update(Message).where(Message.subject == "ÉTÉ en fête").values(user_id=other))
        s.execute(
            update(Message).where(Message.subject == "NEAR the station").values(is_preview=True)
        )
        s.execute(update(Message).values(open_count=Message.open_count + 1))
        s.execute(delete(Message).where(Message.subject == "Grüße aus Köln"))
    with database.engine.connect() as conn:
        copied = set(
            conn.execute(
                text(
                    "SELECT message_id, user_id, is_preview, search_text FROM messages_search_text"
                )
            ).all()
        )
        expected = set(
            conn.execute(
                text(
                    "SELECT id, user_id, is_preview,"
                    " lower(subject || ' ' || to_header || ' ' || cc_header) FROM messages"
                )
            ).all()
        )
    assert copied == expected
    assert len(copied) == len(EMAILS)  # ten of hers, one of Tom's, one deleted
    assert _subjects(database, sally, "again") == {"Plain AGAIN"}
    assert _subjects(database, sally, "fê") == set()  # Uma's now
    assert _subjects(database, other, "fê") == {"ÉTÉ en fête"}
    assert _subjects(database, sally, "station") == set()  # a preview


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
    """The emails SQLite's trigram table finds for "figures"; on PostgreSQL, whether a
    trigram index exists, on messages (a3d5f7b9c1e2) or on messages_search_text
    (d6a8c0e2f4b5), as a list of nothing, or None."""
    if not database.is_sqlite:
        inspector = inspect(database.engine)
        names = {i["name"] for i in inspector.get_indexes("messages")}
        if "messages_search_text" in inspector.get_table_names():
            names |= {i["name"] for i in inspector.get_indexes("messages_search_text")}
        return [] if names & {"messages_search_trgm", "messages_search_text_trgm"} else None
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


def test_the_search_text_migration_copies_emails_already_there(fresh_url: str) -> None:
    upgrade(fresh_url, "c5f7b9d1e3a4")
    database = Database(fresh_url)
    try:
        with database.unit_of_work() as s:
            user_id = make_user(s).id
            s.execute(
                insert(Message).values(
                    user_id=user_id, subject="Ünal's Q3", to_header="ann@example.org", cc_header=""
                )
            )
        for _ in range(2):  # up, down, and up again
            upgrade(fresh_url)
            assert _subjects(database, user_id, "q3") == {"Ünal's Q3"}
            assert _subjects(database, user_id, "ann@") == {"Ünal's Q3"}
            command.downgrade(alembic_config(fresh_url), "c5f7b9d1e3a4")
            names = set(inspect(database.engine).get_table_names())
            assert "messages_search_text" not in names
            if not database.is_sqlite:
                # The trigram index is back on messages, where a3d5f7b9c1e2 put it.
                assert _indexed(database) == []
    finally:
        database.dispose()


def test_postgresql_plans_each_search_for_what_is_typed(database: Database, sally: int) -> None:
    """psycopg prepares a statement run five times on a connection; PostgreSQL would then
    plan every search alike (the trigram index, which reads all of itself for two
    characters). The search asks for a plan of its own each time."""
    if database.is_sqlite:
        pytest.skip("PostgreSQL only")
    with database.sessions() as s:
        s.execute(text("DEALLOCATE ALL"))
        for q in ["hello"] * 12 + ["zz", "example"]:
            mail_page(s, sally, q=q)
            s.commit()
        plans = s.execute(
            text(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements"
                " WHERE statement LIKE '%FROM messages_search_text%'"
            )
        ).one()
        assert mail_page(s, sally, q="zz").items == []
    assert plans.generic_plans == 0
    assert plans.custom_plans > 5  # prepared, and planned anew each time
