"""The Mail tab's search through its indexes: the same results as a scan, whatever is typed.

Both backends match a LIKE on a lowered copy of the searched text, kept by triggers
(``messages_search_text``; migrations d6a8c0e2f4b5 and f8c0e2a4b6d7). SQLite finds
candidates through an FTS5 trigram table (migration a3d5f7b9c1e2) and re-checks them
with that LIKE; PostgreSQL indexes the copy with pg_trgm. Each search here runs both
ways and must find the same emails.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import (
    Connection,
    Row,
    delete,
    func,
    insert,
    inspect,
    or_,
    select,
    text,
    update,
)

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail import reading
from mailbeacon.mail.reading import mail_page
from mailbeacon.mail.schemas import MailFilter, MailPageOut
from mailbeacon.migrate import alembic_config, upgrade
from mailbeacon.models import Message, RecipientCopy
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


def _matched_on_messages(
    database: Database, user_id: int, q: str, mail_filter: MailFilter | None = None
) -> list[Row[Any]]:
    """What the search matched before ``messages_search_text``, written out here apart
    from mail/reading.py: a LIKE on each of the subject, To and Cc of ``messages``
    itself (lowered on PostgreSQL, where LIKE minds case; SQLite's folds ASCII case as
    its lower() does), or on a Bcc copy's address; the user's emails, the list's order."""
    folded = " ".join(q.replace("\x00", " ").split())[: reading.MAX_SEARCH_CHARS].lower()
    escaped = folded.replace("/", "//").replace("%", "/%").replace("_", "/_")
    m, c = Message.__table__.c, RecipientCopy.__table__.c

    def like(col: Any) -> Any:
        return (col if database.is_sqlite else func.lower(col)).like(f"%{escaped}%", escape="/")

    bcc = select(c.message_id).where(c.kind == "bcc", like(c.address))
    query = select(m.id, m.subject).where(
        m.user_id == user_id,
        m.is_preview.is_(False),
        or_(like(m.subject), like(m.to_header), like(m.cc_header), m.id.in_(bcc)),
    )
    if mail_filter == MailFilter.OPENED:
        query = query.where(m.open_count > 0)
    with database.sessions() as s:
        return list(s.execute(query.order_by(m.created_at.desc(), m.id.desc())))


def _on_messages(database: Database, user_id: int, q: str) -> set[str]:
    return {row.subject for row in _matched_on_messages(database, user_id, q)}


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
            "messages_search_text_insert",
            "messages_search_text_update",
            "messages_search_text_delete",
        } <= triggers
        assert "messages_search_text" in names
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
    expected = _on_messages(database, sally, q)
    assert _subjects(database, sally, q) == expected
    assert _scanned(database, sally, q, monkeypatch) == expected


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


def _walk_always(monkeypatch: pytest.MonkeyPatch) -> list[list[int] | None]:
    """Every search with a match takes the road of a term with more than
    ``SEARCH_CANDIDATES`` matches (a bound of none); the list returned fills with what
    each search's lookup of its matches answered (None: the walk)."""
    monkeypatch.setattr(reading, "SEARCH_CANDIDATES", 0)
    return _roads(monkeypatch)


def _roads(monkeypatch: pytest.MonkeyPatch) -> list[list[int] | None]:
    roads: list[list[int] | None] = []
    lookup = reading._search_candidates

    def recorded(session: Any, user_id: int, search: Any) -> list[int] | None:
        roads.append(lookup(session, user_id, search))
        return roads[-1]

    monkeypatch.setattr(reading, "_search_candidates", recorded)
    return roads


@pytest.mark.parametrize("q", SEARCHES)
def test_the_walk_through_the_newest_emails_finds_what_a_scan_finds(
    database: Database, sally: int, q: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The walk over messages_search_text in the list's order (b0e2a4c6d8f1) finds what
    the LIKE per column on messages finds, in the same order, page after page."""
    expected = [row.subject for row in _matched_on_messages(database, sally, q)]
    roads = _walk_always(monkeypatch)
    assert _pages(database, sally, q, limit=3) == expected
    if expected:
        assert roads and all(road is None for road in roads)


def _page_ids(
    database: Database, user_id: int, q: str, mail_filter: MailFilter | None = None
) -> tuple[list[int], list[int]]:
    """Every page of a search, newest first, following the older cursor; then back to
    the newest from the last page, following the newer cursor (ids, both in the list's
    order)."""
    with database.sessions() as s:

        def page(before: str | None = None, after: str | None = None) -> MailPageOut:
            return mail_page(s, user_id, q=q, mail_filter=mail_filter, before=before, after=after)

        current = page()
        older = [item.id for item in current.items]
        while current.older_cursor is not None:
            current = page(before=current.older_cursor)
            older += [item.id for item in current.items]
        newer = [item.id for item in current.items]
        while current.newer_cursor is not None:
            current = page(after=current.newer_cursor)
            newer = [item.id for item in current.items] + newer
    return older, newer


def test_a_term_with_over_a_thousand_old_matches_walks_the_newest_emails(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More than SEARCH_CANDIDATES matches, all older than the newest emails (bench's
    ``proposal 1``): the page walks the copies newest first, in the list's order with
    its tie-break, and finds what a LIKE per column on messages finds, Bcc included."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    old = reading.SEARCH_CANDIDATES + 100
    with database.unit_of_work() as s:
        user_id = make_user(s).id
        other = make_user(s, "tom@example.com").id

        def email(i: int, subject: str, **values: Any) -> dict[str, Any]:
            # Three emails a minute: equal dates, ordered by id.
            at = start + timedelta(minutes=i // 3)
            row = {"user_id": user_id, "subject": subject, "to_header": "ann@example.org"}
            return {"cc_header": "", "created_at": at, "open_count": i % 2} | row | values

        rows = [email(i, f"Proposal {10_000 + i} for ann") for i in range(old)]
        rows += [email(i, f"Update {i}") for i in range(old, old + 300)]
        rows += [
            email(old + 300, "Unrelated", to_header="Proposal 1 team <team@example.org>"),
            email(old + 301, "Also unrelated", cc_header="x@proposal 1.example"),
            email(old + 302, "Proposal 1 draft", is_preview=True),
            email(old + 303, "Proposal 1 of Tom's", user_id=other),
            email(old + 304, "Blind"),
        ]
        s.execute(insert(Message), rows)
        blind = s.scalar(select(Message.id).where(Message.subject == "Blind"))
        s.execute(
            insert(RecipientCopy).values(
                message_id=blind, address="proposal 1@example.org", kind="bcc", decision="tracked"
            )
        )
    roads = _roads(monkeypatch)
    for mail_filter in (None, MailFilter.OPENED):
        matched = _matched_on_messages(database, user_id, "proposal 1", mail_filter)
        expected = [row.id for row in matched]
        # Hers, less the preview: the old ones, To, Cc and Bcc; opened: every other old
        # one and the Cc.
        assert len(expected) == (old + 3 if mail_filter is None else old // 2 + 1)
        assert _page_ids(database, user_id, "Proposal 1", mail_filter) == (expected, expected)
    assert roads and all(road is None for road in roads)


def test_the_sort_key_follows_the_emails(
    database: Database, sally: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An email whose date changes moves in the walk's order too: the triggers copy
    created_at on updates of it (b0e2a4c6d8f1)."""
    with database.unit_of_work() as s:
        s.execute(
            update(Message)
            .where(Message.subject == EMAILS[0][0])
            .values(created_at=utcnow() + timedelta(days=1))
        )
        s.execute(
            update(Message)
            .where(Message.subject == "plain")
            .values(created_at=datetime(2000, 1, 1, tzinfo=UTC))
        )
    with database.engine.connect() as conn:
        assert _search_text_copied(conn) == _search_text_expected(conn, database.is_sqlite)
    expected = [row.subject for row in _matched_on_messages(database, sally, "e")]
    assert (expected[0], expected[-1]) == (EMAILS[0][0], "plain")  # the oldest, the newest
    roads = _walk_always(monkeypatch)
    assert _pages(database, sally, "e", limit=3) == expected
    assert roads and all(road is None for road in roads)


def _search_text_expected(conn: Connection, is_sqlite: bool) -> set[tuple[object, ...]]:
    """What messages_search_text must hold, computed from messages: the three columns
    lowered and joined by newlines (a9d1f3b5c7e9 on PostgreSQL, f8c0e2a4b6d7 on SQLite,
    which copies only the emails with an owner), and the list's sort key (b0e2a4c6d8f1)."""
    newline = "char(10)" if is_sqlite else "chr(10)"
    query = (
        f"SELECT id, user_id, is_preview, lower(subject || {newline} || to_header"
        f" || {newline} || cc_header), created_at FROM messages"
    )
    if is_sqlite:
        query += " WHERE user_id IS NOT NULL"
    return {tuple(row) for row in conn.execute(text(query))}


def _search_text_copied(conn: Connection) -> set[tuple[object, ...]]:
    rows = conn.execute(
        text(
            "SELECT message_id, user_id, is_preview, search_text, created_at"
            " FROM messages_search_text"
        )
    )
    return {tuple(row) for row in rows}


def _search_text_copied_before_key(conn: Connection) -> set[tuple[object, ...]]:
    rows = conn.execute(
        text("SELECT message_id, user_id, is_preview, search_text FROM messages_search_text")
    )
    return {tuple(row) for row in rows}


def test_search_text_follows_the_emails(database: Database, sally: int) -> None:
    """The triggers keep messages_search_text equal to what the search matches on:
    inserts, updates of the searched columns, of the owner and of preview, and
    deletes."""
    with database.unit_of_work() as s:
        other = make_user(s, "uma@example.com").id
        s.execute(update(Message).where(Message.subject == "plain").values(subject="Plain AGAIN"))
        s.execute(update(Message).where(Message.subject == "ÉTÉ en fête").values(user_id=other))
        s.execute(
            update(Message).where(Message.subject == "NEAR the station").values(is_preview=True)
        )
        s.execute(update(Message).values(open_count=Message.open_count + 1))
        s.execute(delete(Message).where(Message.subject == "Grüße aus Köln"))
        s.execute(
            insert(Message).values(
                user_id=sally, subject="Inserted", to_header="Kim <kim@example.org>", cc_header=""
            )
        )
        # Without an owner, then given one (as the migration tests write them).
        s.execute(insert(Message).values(subject="Ownerless", to_header="", cc_header=""))
        s.execute(update(Message).where(Message.subject == "Ownerless").values(user_id=other))
        s.execute(insert(Message).values(subject="Unowned", to_header="", cc_header=""))
    with database.engine.connect() as conn:
        copied = _search_text_copied(conn)
        expected = _search_text_expected(conn, database.is_sqlite)
    assert copied == expected
    # Ten of hers, Tom's, one inserted, Uma's, less one deleted; the unowned email is
    # kept on PostgreSQL only (every search is scoped to an owner).
    assert len(copied) == len(EMAILS) + 3 - (1 if database.is_sqlite else 0)
    assert _subjects(database, sally, "again") == {"Plain AGAIN"}
    assert _subjects(database, sally, "fê") == set()  # Uma's now
    assert _subjects(database, other, "fê") == {"ÉTÉ en fête"}
    assert _subjects(database, other, "ownerless") == {"Ownerless"}
    assert _subjects(database, sally, "station") == set()  # a preview
    assert _subjects(database, sally, "kim@") == {"Inserted"}
    assert _subjects(database, sally, "köln") == set()  # deleted
    with database.unit_of_work() as s:
        s.execute(update(Message).where(Message.subject == "Ownerless").values(user_id=None))
        s.execute(delete(Message).where(Message.user_id == sally))
    with database.engine.connect() as conn:
        assert _search_text_copied(conn) == _search_text_expected(conn, database.is_sqlite)
    assert _subjects(database, other, "ownerless") == set()


def test_a_search_never_matches_across_two_columns(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A match lies within the subject, the To or the Cc, never across two of them
    (both backends join them with a newline, which no search can contain), whether the
    trigram index gives the candidates or the copy is scanned."""
    with database.unit_of_work() as s:
        user = make_user(s)
        s.execute(
            insert(Message).values(
                user_id=user.id, subject="Alpha", to_header="beta@example.org", cc_header="Gamma"
            )
        )
        user_id = user.id
    # _on_messages: the match on messages itself, the road of a term too common for
    # the copy, which must agree with it.
    for q in ("alpha", "beta@", "gamma", "ha", "ga"):  # each column by itself
        assert _subjects(database, user_id, q) == {"Alpha"}, q
        assert _scanned(database, user_id, q, monkeypatch) == {"Alpha"}, q
        assert _on_messages(database, user_id, q) == {"Alpha"}, q
    for q in ("alpha beta", "alpha\nbeta", "a b", "a\nb", "org gamma", "g gamma", "a%b", "a_b"):
        assert _subjects(database, user_id, q) == set(), q
        assert _scanned(database, user_id, q, monkeypatch) == set(), q
        assert _on_messages(database, user_id, q) == set(), q


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
            # No owner: SQLite's copy (f8c0e2a4b6d7) leaves it out.
            s.execute(insert(Message).values(subject="Preview", to_header="", cc_header=""))
        for _ in range(2):  # up, down, and up again
            upgrade(fresh_url)
            with database.engine.connect() as conn:
                copied = _search_text_copied(conn)
                assert copied == _search_text_expected(conn, database.is_sqlite)
                assert len(copied) == (1 if database.is_sqlite else 2)
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


def test_the_newline_migration_rejoins_emails_already_there(fresh_url: str) -> None:
    """a9d1f3b5c7e9 rewrites PostgreSQL's copies and its trigger to join with newlines,
    keeps the trigram index, and its downgrade puts the spaces back; SQLite's copy is
    left as it was."""
    upgrade(fresh_url, "f8c0e2a4b6d7")
    database = Database(fresh_url)

    def joined(sep: str) -> set[str]:
        # The copies of both emails, as they must read with this separator.
        return {f"alpha{sep}beta@example.org{sep}gamma", f"delta{sep}{sep}"}

    def copies() -> set[str]:
        with database.engine.connect() as conn:
            return set(conn.execute(text("SELECT search_text FROM messages_search_text")).scalars())

    def has_trigram_index() -> bool:
        if database.is_sqlite:
            return True  # SQLite's copy has none; its FTS5 table is a3d5f7b9c1e2's
        indexes = inspect(database.engine).get_indexes("messages_search_text")
        return "messages_search_text_trgm" in {i["name"] for i in indexes}

    def write_second() -> None:
        # Written at each revision, through the trigger of that revision.
        with database.unit_of_work() as s:
            s.execute(delete(Message).where(Message.subject == "Delta"))
            s.execute(
                insert(Message).values(user_id=user_id, subject="Delta", to_header="", cc_header="")
            )

    try:
        with database.unit_of_work() as s:
            user_id = make_user(s).id
            s.execute(
                insert(Message).values(
                    user_id=user_id,
                    subject="Alpha",
                    to_header="beta@example.org",
                    cc_header="Gamma",
                )
            )
        write_second()
        before = "\n" if database.is_sqlite else " "
        assert copies() == joined(before)
        upgrade(fresh_url, "a9d1f3b5c7e9")
        assert copies() == joined("\n")
        write_second()
        assert copies() == joined("\n")
        assert has_trigram_index()
        assert _subjects(database, user_id, "alpha beta") == set()
        assert _subjects(database, user_id, "alpha") == {"Alpha"}
        command.downgrade(alembic_config(fresh_url), "f8c0e2a4b6d7")
        assert copies() == joined(before)
        write_second()
        assert copies() == joined(before)
        assert has_trigram_index()
    finally:
        database.dispose()


def test_the_sort_key_migration_copies_emails_already_there(
    fresh_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """b0e2a4c6d8f1 gives the copies already there their email's date, which the walk
    lists them by; its downgrade leaves the copies, their key and their triggers as
    a9d1f3b5c7e9 made them."""
    upgrade(fresh_url, "a9d1f3b5c7e9")
    database = Database(fresh_url)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    # By id: dated the second, the newest, the oldest, and the second again (the id
    # breaks the tie).
    dates = [start + timedelta(days=d) for d in (1, 2, 0, 1)]

    def columns() -> set[str]:
        return {c["name"] for c in inspect(database.engine).get_columns("messages_search_text")}

    def key() -> list[str]:
        return inspect(database.engine).get_pk_constraint("messages_search_text")[
            "constrained_columns"
        ]

    def copied_without_key() -> tuple[set[tuple[object, ...]], set[tuple[object, ...]]]:
        with database.engine.connect() as conn:
            copied = {row[:4] for row in _search_text_copied_before_key(conn)}
            expected = {row[:4] for row in _search_text_expected(conn, database.is_sqlite)}
        return copied, expected

    try:
        with database.unit_of_work() as s:
            user_id = make_user(s).id
            ids = [
                s.execute(
                    insert(Message).values(
                        user_id=user_id,
                        subject=f"Alpha {i}",
                        to_header="",
                        cc_header="",
                        created_at=at,
                    )
                ).inserted_primary_key[0]
                for i, at in enumerate(dates)
            ]
        with monkeypatch.context() as m:
            m.setattr(reading, "SEARCH_CANDIDATES", 0)
            for _ in range(2):  # up, down, and up again
                upgrade(fresh_url)
                assert "created_at" in columns()
                with database.engine.connect() as conn:
                    assert _search_text_copied(conn) == _search_text_expected(
                        conn, database.is_sqlite
                    )
                if database.is_sqlite:
                    assert key() == ["user_id", "created_at", "message_id"]
                order = sorted(range(len(dates)), key=lambda i: (dates[i], ids[i]), reverse=True)
                # [1, 3, 0, 2] at first; then Alpha 0, written again, has the newer id.
                assert order == ([1, 3, 0, 2] if ids[0] < ids[3] else [1, 0, 3, 2])
                assert _pages(database, user_id, "alpha", limit=1) == [f"Alpha {i}" for i in order]
                command.downgrade(alembic_config(fresh_url), "a9d1f3b5c7e9")
                assert "created_at" not in columns()
                assert key() == (
                    ["user_id", "message_id"] if database.is_sqlite else ["message_id"]
                )
                # Written through the triggers of a9d1f3b5c7e9, which know no key.
                with database.unit_of_work() as s:
                    s.execute(delete(Message).where(Message.id == ids[0]))
                    ids[0] = s.execute(
                        insert(Message).values(
                            user_id=user_id,
                            subject="Alpha 0",
                            to_header="",
                            cc_header="",
                            created_at=dates[0],
                        )
                    ).inserted_primary_key[0]
                copied, expected = copied_without_key()
                assert copied == expected and len(copied) == len(dates)
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
