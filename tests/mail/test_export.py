"""CSV exports: the Mail tab's rows under its filter and search, all pages of them, and an
email's timeline; read back with Python's csv module. Another user's email is not found,
and no cell runs as a spreadsheet formula."""

from __future__ import annotations

import csv
import io
import re
import time

import httpx
import pytest

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.mail import reading
from mailbeacon.mail.export import safe_cell
from tests.client import sign_in
from tests.factories.accounts import make_demo_sender
from tests.factories.hits import SCANNER, hit
from tests.factories.mail import send_mail

pytestmark = pytest.mark.asyncio


def rows_of(response: httpx.Response) -> list[dict[str, str]]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/csv")
    assert response.headers["content-disposition"].startswith("attachment;")
    return list(csv.DictReader(io.StringIO(response.text)))


def tab_ids(html: str) -> list[str]:
    return re.findall(r'<tr id="mail-(\d+)"', html)


async def test_the_mail_csv_has_the_rows_the_mail_tab_shows(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    runtime = app.runtime
    uid = make_demo_sender(database)
    sent = {}
    for n in range(6):
        to = ("ann@example.org",) if n % 2 else ("bob@example.org", "carl@example.org")
        sent[n] = send_mail(database, runtime, uid, to, subject=f"Offer {n}")
    now = time.time()
    for n in (1, 2, 5):
        for copy_id in sent[n].copies.values():
            runtime.write_batch([hit(copy_id, at=now - 60)], replay=False)
    await sign_in(client)
    for query in ("", "?filter=opened", "?q=ann%40example.org", "?filter=opened&q=Offer+5"):
        tab = await client.get(f"/mail{query}")
        rows = rows_of(await client.get(f"/mail.csv{query}"))
        assert [r["id"] for r in rows] == tab_ids(tab.text), query
        api = rows_of(await client.get(f"/api/mail/export.csv{query}"))
        assert api == rows
    rows = rows_of(await client.get("/mail.csv?filter=opened"))
    assert [r["subject"] for r in rows] == ["Offer 5", "Offer 2", "Offer 1"]
    two = next(r for r in rows if r["subject"] == "Offer 2")
    assert two["opens"] == "2" and two["delivery"] == "sent: 2"
    assert two["recipients"] == "bob@example.org (to); carl@example.org (to)"
    assert two["first_open_at"] and two["open_tracking"] == "yes"


async def test_the_mail_csv_holds_every_page_not_only_the_first(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    uid = make_demo_sender(database)
    for n in range(reading.PAGE_SIZE + 3):
        send_mail(database, app.runtime, uid, subject=f"Note {n}")
    await sign_in(client)
    rows = rows_of(await client.get("/mail.csv"))
    assert len(rows) == reading.PAGE_SIZE + 3
    assert len(tab_ids((await client.get("/mail")).text)) == reading.PAGE_SIZE


async def test_the_timeline_csv_lists_every_event_with_its_label(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    uid = make_demo_sender(database)
    sent = send_mail(database, app.runtime, uid)
    copy_id = sent.copies["ann@example.org"]
    now = time.time()
    app.runtime.write_batch(
        [
            hit(copy_id, at=now - 300, ua=SCANNER),
            hit(copy_id, at=now - 200),
            hit(copy_id, "click", at=now - 100, position=1),
        ],
        replay=False,
    )
    await sign_in(client)
    detail = await client.get(f"/mail/{sent.message_id}")
    assert f'href="/mail/{sent.message_id}/timeline.csv"' in detail.text
    rows = rows_of(await client.get(f"/mail/{sent.message_id}/timeline.csv"))
    assert [(r["kind"], r["label"], r["counted"]) for r in rows] == [
        ("click", "human", "yes"),
        ("open", "human", "yes"),
        ("open", "scanner", "no"),
    ]
    assert rows[0]["link_url"] == "https://example.com/pricing"
    assert all(r["recipient"] == "ann@example.org" and r["reason"] for r in rows)
    api = rows_of(await client.get(f"/api/mail/{sent.message_id}/timeline.csv"))
    assert api == rows


async def test_another_users_timeline_is_not_found(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    sally = make_demo_sender(database)
    sent = send_mail(database, app.runtime, sally)
    make_demo_sender(database, "tom@example.com", name="Tom")
    await sign_in(client, "tom@example.com")
    assert (await client.get(f"/mail/{sent.message_id}/timeline.csv")).status_code == 404
    assert (await client.get(f"/api/mail/{sent.message_id}/timeline.csv")).status_code == 404
    assert rows_of(await client.get("/mail.csv")) == []


async def test_a_subject_written_as_a_formula_is_exported_as_text(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database
) -> None:
    uid = make_demo_sender(database)
    send_mail(database, app.runtime, uid, subject='=HYPERLINK("http://evil.example","x")')
    await sign_in(client)
    [row] = rows_of(await client.get("/mail.csv"))
    assert row["subject"] == '\'=HYPERLINK("http://evil.example","x")'
    assert [safe_cell(v) for v in ("+1", "-2", "@a", "\tx", "plain", 3, None, True)] == [
        "'+1",
        "'-2",
        "'@a",
        "'\tx",
        "plain",
        "3",
        "",
        "yes",
    ]
