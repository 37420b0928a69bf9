"""A copy's bodies live apart from its row (``recipient_copy_bodies``, c1e3a5b7d9f2)."""

from __future__ import annotations

from alembic import command
from sqlalchemy import delete, insert, inspect, select, text

from mailbeacon.db import Database
from mailbeacon.migrate import alembic_config, upgrade
from mailbeacon.models import CopyBody, CopyStatus, Message, RecipientCopy
from tests.factories.accounts import make_user

BEFORE = "b0e2a4c6d8f1"
HTML = "<p>Hi Ann, our <a href='https://mb.test/t/c/x'>offer</a> \u00fcber alles</p>" * 300
TEXT = "Hi Ann, our offer: https://mb.test/t/c/x\n"


def _copy_columns(database: Database) -> set[str]:
    return {c["name"] for c in inspect(database.engine).get_columns("recipient_copies")}


def _old_bodies(database: Database) -> dict[str, tuple[str | None, str | None]]:
    with database.engine.connect() as conn:
        rows = conn.execute(
            text("SELECT address, html_body, text_body FROM recipient_copies ORDER BY id")
        )
        return {address: (html, text_) for address, html, text_ in rows}


def _new_bodies(database: Database) -> dict[str, tuple[str | None, str | None]]:
    with database.sessions() as s:
        copies = s.scalars(select(RecipientCopy).order_by(RecipientCopy.id))
        return {c.address: (c.html_body, c.text_body) for c in copies}


def test_the_migration_moves_bodies_out_and_back(fresh_url: str) -> None:
    upgrade(fresh_url, BEFORE)
    database = Database(fresh_url)
    try:
        with database.unit_of_work() as s:
            user_id = make_user(s).id
            message_id = s.execute(
                insert(Message).values(user_id=user_id, subject="Offer", to_header="", cc_header="")
            ).inserted_primary_key[0]
            for address in ("ann@example.org", "bob@example.org", "cid@example.org"):
                s.execute(
                    insert(RecipientCopy).values(
                        message_id=message_id,
                        address=address,
                        decision="tracked",
                        status=CopyStatus.SENT,
                    )
                )
            # Written in that revision's own columns: HTML and text, text only, neither.
            s.execute(
                text(
                    "UPDATE recipient_copies SET html_body = :h, text_body = :t WHERE address = :a"
                ),
                [
                    {"h": HTML, "t": TEXT, "a": "ann@example.org"},
                    {"h": None, "t": TEXT, "a": "bob@example.org"},
                ],
            )
        before = _old_bodies(database)
        assert before["ann@example.org"] == (HTML, TEXT)
        for _ in range(2):  # up, down, and up again
            upgrade(fresh_url)
            assert not {"html_body", "text_body"} & _copy_columns(database)
            assert _new_bodies(database) == before
            with database.sessions() as s:
                # A copy with neither body has no row of them.
                assert s.scalar(select(text("count(*)")).select_from(CopyBody)) == 2
            command.downgrade(alembic_config(fresh_url), BEFORE)
            assert "recipient_copy_bodies" not in inspect(database.engine).get_table_names()
            assert _old_bodies(database) == before
    finally:
        database.dispose()


def test_bodies_are_written_with_their_copy_and_deleted_with_it(database: Database) -> None:
    with database.unit_of_work() as s:
        user_id = make_user(s).id
        message = Message(user_id=user_id, subject="Offer", to_header="", cc_header="")
        s.add(message)
        s.flush()
        kept = RecipientCopy(message_id=message.id, address="ann@example.org", decision="tracked")
        kept.html_body, kept.text_body = HTML, TEXT
        gone = RecipientCopy(message_id=message.id, address="bob@example.org", decision="tracked")
        gone.text_body = TEXT
        s.add_all([kept, gone])
        s.flush()
        kept_id, gone_id = kept.id, gone.id
    with database.unit_of_work() as s:
        assert s.get_one(CopyBody, kept_id).html_body == HTML
        assert s.get_one(CopyBody, gone_id).html_body is None
        # Deleted in SQL, as erasure and retention delete copies: the database cascades.
        s.execute(delete(RecipientCopy).where(RecipientCopy.id == gone_id))
    with database.unit_of_work() as s:
        assert s.scalars(select(CopyBody.copy_id)).all() == [kept_id]
        # And through the ORM.
        s.delete(s.get_one(RecipientCopy, kept_id))
    with database.sessions() as s:
        assert s.scalars(select(CopyBody.copy_id)).all() == []
