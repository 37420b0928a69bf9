"""A person's rights: export holds everything about them and nothing about anyone else;
erasure leaves no trace of their address anywhere in the database, and the emails'
figures do not move. From the pages, the API and the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, text

from mailbeacon import cli
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import DemoMessage, Message, ReceivedKind, ReceivedMail, User
from tests.client import csrf_of
from tests.factories.hits import CHROME, THUNDERBIRD, hit, record
from tests.factories.privacy import copies_of, record_consent

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello,</p><p>see <a href="https://example.com/offer">our offer</a>.</p>'
ANN, BOB = "ann@example.org", "bob@example.com"
ANN_PREFIX, BOB_PREFIX = "203.0.113.0/24", "198.51.100.0/24"


def alice(db: Database) -> int:
    with db.sessions() as s:
        found = s.scalar(select(User.id).where(User.email == "alice@example.com"))
        assert found is not None
        return found


async def history(app: MailbeaconApp, admin: httpx.AsyncClient) -> int:
    """Ann and Bob consented, got one email, opened and clicked it; Ann replied; the demo
    inbox holds a copy naming her; her contact page was viewed. Returns the email's id."""
    db, user_id = app.runtime.database, alice(app.runtime.database)
    record_consent(db, app.runtime, user_id, ANN)
    record_consent(db, app.runtime, user_id, BOB)
    r = await admin.post(
        "/api/messages",
        json={"to": [f"Ann Example <{ANN}>", BOB], "subject": "Our offer", "body_html": BODY},
    )
    message_id = int(r.json()["id"])
    copies = copies_of(db, message_id)
    record(
        app.runtime,
        hit(copies[ANN].id, ua=CHROME, ip_prefix=ANN_PREFIX),
        hit(copies[BOB].id, ua=THUNDERBIRD, ip_prefix=BOB_PREFIX),
        hit(copies[ANN].id, "click", ua=CHROME, ip_prefix=ANN_PREFIX, position=0),
    )
    with db.unit_of_work() as s:
        s.add(
            ReceivedMail(
                user_id=user_id,
                message_id=message_id,
                copy_id=copies[ANN].id,
                kind=ReceivedKind.REPLY,
                dedupe_key="<reply-1@example.org>",
                from_address=ANN,
                from_name="Ann Example",
                subject="Re: Our offer",
                received_at=utcnow(),
                new_text="Sounds good, call me on Tuesday. Ann",
                full_text="Sounds good, call me on Tuesday. Ann",
            )
        )
        s.add(
            DemoMessage(
                mail_from="alice@example.com",
                recipient=BOB,
                raw=f"To: Ann Example <{ANN}>, {BOB}\r\nSubject: x\r\n\r\nhi".encode(),
            )
        )
    assert (await admin.get(f"/contacts/{ANN}")).status_code == 200
    return message_id


async def test_export_holds_everything_about_the_person_and_nothing_about_anyone_else(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    await history(app, admin)
    r = await admin.get(f"/api/contacts/{ANN}/export")
    assert r.status_code == 200
    data = r.json()
    assert data["contact"]["address"] == ANN and data["contact"]["consent_state"] == "granted"
    assert [c["method"] for c in data["consent_history"]] == ["web_form"]
    (email,) = data["emails"]
    assert email["subject"] == "Our offer" and email["opens"] == 1 and email["clicks"] == 1
    kinds = sorted(e["kind"] for e in email["events"])
    assert kinds == ["click", "open"]
    assert {e["user_agent"] for e in email["events"]} == {CHROME}
    assert {e["network_prefix"] for e in email["events"]} == {ANN_PREFIX}
    assert email["clicks_per_link"][0]["link"] == "https://example.com/offer"
    assert data["replies"][0]["text"].startswith("Sounds good")
    dumped = json.dumps(data)
    for someone_else in (BOB, THUNDERBIRD, BOB_PREFIX, "bob"):
        assert someone_else not in dumped
    # The page's download is the same data, as a file.
    page = await admin.get(f"/contacts/{ANN}/export")
    assert page.headers["content-disposition"].startswith("attachment")
    assert json.loads(page.text)["emails"][0]["events"]


def database_text(db: Database) -> str:
    """Everything the database holds, as text: SQLite's dump, or on PostgreSQL every text
    column (and bytea, as text) of every table of the test's schema."""
    with db.engine.connect() as conn:
        if db.is_sqlite:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            return "\n".join(raw.iterdump())  # type: ignore[attr-defined]
        columns = conn.execute(
            text(
                "SELECT table_name, column_name, data_type FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND data_type IN "
                "('text', 'character varying', 'bytea', 'json', 'jsonb')"
            )
        ).all()
        parts = []
        for table, column, kind in columns:
            value = f"encode(\"{column}\", 'escape')" if kind == "bytea" else f'"{column}"::text'
            parts.extend(
                str(v)
                for v in conn.execute(text(f'SELECT {value} FROM "{table}"')).scalars()
                if v is not None
            )
        return "\n".join(parts)


def traces(dump: str, *words: str) -> list[str]:
    lowered = dump.lower()
    found = []
    for word in words:
        if word.lower() in lowered or word.encode().hex() in lowered:
            found.append(word)
    return found


async def test_after_erasure_the_database_holds_no_trace_of_the_address(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    db = app.runtime.database
    message_id = await history(app, admin)
    with db.sessions() as s:
        before = s.get(Message, message_id)
        assert before is not None
        figures = (before.open_count, before.click_count, before.reply_count)
    assert traces(database_text(db), ANN, "Ann Example", "call me on Tuesday") != []

    r = await admin.delete(f"/api/contacts/{ANN}")
    assert r.status_code == 200
    assert r.json()["copies"] == 1 and r.json()["replies"] == 1

    dump = database_text(db)
    assert traces(dump, ANN, "Ann Example", "call me on Tuesday") == []
    assert BOB in dump  # the dump does see addresses: Bob's are all still there
    with db.sessions() as s:
        after = s.get(Message, message_id)
        assert after is not None
        # The email keeps its figures (anonymous counts all along) and its other recipient.
        assert (after.open_count, after.click_count, after.reply_count) == figures
        assert after.to_header == BOB
    assert (await admin.get(f"/api/contacts/{ANN}")).status_code == 404
    assert (await admin.get(f"/api/mail/{message_id}")).json()["open_count"] == figures[0] == 2
    # The audit log says an erasure happened, without saying whose.
    log = (await admin.get("/api/audit")).json()["items"]
    assert log[0]["action"] == "contact.erased" and log[0]["subject"] == ""


async def test_only_an_admin_exports_or_erases(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    await history(app, admin)
    assert (await member.get(f"/api/contacts/{ANN}/export")).status_code == 403
    assert (await member.delete(f"/api/contacts/{ANN}")).status_code == 403
    assert (await member.get(f"/contacts/{ANN}/export")).status_code == 403
    page = await member.get(f"/contacts/{ANN}")
    r = await member.post(
        f"/contacts/{ANN}/erase", data={"csrf_token": csrf_of(page.text), "confirm": ANN}
    )
    assert r.status_code == 403
    assert (await admin.get(f"/api/contacts/{ANN}")).status_code == 200


async def test_erasing_from_the_page_needs_the_address_typed_again(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    await history(app, admin)
    page = await admin.get(f"/contacts/{ANN}")
    token = csrf_of(page.text)
    wrong = await admin.post(f"/contacts/{ANN}/erase", data={"csrf_token": token, "confirm": BOB})
    assert wrong.status_code == 422 and "Type the contact" in wrong.text
    done = await admin.post(f"/contacts/{ANN}/erase", data={"csrf_token": token, "confirm": ANN})
    assert done.status_code == 303
    assert traces(database_text(app.runtime.database), ANN) == []


async def test_the_command_line_exports_and_erases(
    app: MailbeaconApp,
    admin: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    await history(app, admin)
    monkeypatch.setenv("MAILBEACON_DATABASE_URL", settings.database_url())
    monkeypatch.setenv("MAILBEACON_DATA_DIR", str(Path(settings.DATA_DIR)))
    capsys.readouterr()
    assert cli.main(["contact", "export", ANN.upper(), "--org", "Privacy Co"]) == 0
    exported: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert exported["contact"]["address"] == ANN and BOB not in json.dumps(exported)
    assert cli.main(["contact", "erase", ANN]) == 0
    assert "erased ann@example.org: 1 copies" in capsys.readouterr().out
    assert cli.main(["contact", "erase", ANN]) == 2
    assert "no contact" in capsys.readouterr().err
    assert traces(database_text(app.runtime.database), ANN) == []
