"""Compose and the send API under hostile or merely unlucky input.

- Text no email can carry (lone surrogates, control characters in a subject, NUL in a
  body) is refused where it is typed, with the reason at the field; before, it gave a
  500 at insert, or a 202 and then copies that failed on every retry.
- A copy sent to the sender's own address goes out untracked, so their own reading is
  never counted as an open.
- One body limit for the form and the API, and a large draft in compose is sent (or
  refused at the field, kept) instead of a bare "Field exceeded maximum size" page.
"""

from __future__ import annotations

import html
import json
import re

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import select, update
from sqlalchemy.orm import selectinload

from mailbeacon.db import Database
from mailbeacon.models import MailboxConnection, Message, RecipientCopy
from tests.client import sign_in, use_demo_mailbox
from tests.factories.accounts import create_user

pytestmark = pytest.mark.asyncio

BODY = '<p>Hello Ann, see <a href="https://example.com/pricing">pricing</a>.</p>'
LIMIT = 5_000_000  # octets of UTF-8 per message, compose and API alike


@pytest_asyncio.fixture
async def sally(client: httpx.AsyncClient, database: Database) -> str:
    """Sally, signed in, sending through the demo mailbox; returns her CSRF token."""
    create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    return csrf


async def compose(client: httpx.AsyncClient, csrf: str, **fields: str) -> httpx.Response:
    data = {
        "csrf_token": csrf,
        "to": "ann@example.org",
        "subject": "Pricing",
        "body_format": "html",
        "body_html": BODY,
        "open_tracking": "true",
        "link_tracking": "true",
        **fields,
    }
    return await client.post("/compose", data=data)


async def compose_multipart(client: httpx.AsyncClient, csrf: str, **fields: str) -> httpx.Response:
    """The form as a browser's FormData sends it: multipart/form-data, no files."""
    data = {"csrf_token": csrf, "to": "ann@example.org", "subject": "Pricing", **fields}
    return await client.post("/compose", files={k: (None, v) for k, v in data.items()})


async def api_send(client: httpx.AsyncClient, csrf: str, **fields: object) -> httpx.Response:
    """POST /api/messages with the JSON written out by hand, so that it can hold a lone
    surrogate escape (``"\\ud800"``) as any JSON client may send it."""
    body = {"to": "ann@example.org", "subject": "Pricing", "body_html": BODY, **fields}
    return await client.post(
        "/api/messages",
        content=json.dumps(body, ensure_ascii=True).encode("ascii"),
        headers={"content-type": "application/json", "x-csrf-token": csrf},
    )


def field_errors_of(page: str, name: str) -> list[str]:
    return [
        html.unescape(m)
        for m in re.findall(rf'<p class="field-error" id="{name}-error-\d+">([^<]*)</p>', page)
    ]


def textarea(page: str, name: str) -> str:
    found = re.search(rf'<textarea id="{name}" name="{name}"[^>]*>(.*?)</textarea>', page, re.S)
    assert found, f"no {name} textarea"
    return html.unescape(found.group(1))


def no_messages(database: Database) -> bool:
    with database.sessions() as s:
        return s.scalars(select(Message)).first() is None


# ------------------------------------------------------------------ text email cannot carry


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("subject", "Price \ud800 list"),
        ("body_html", "<p>Price \udfff list</p>"),
        ("body_text", "Price \ud83d list"),
        ("to", "ann\ud800@example.org"),
    ],
)
async def test_lone_surrogate_is_a_field_error_not_a_500(
    client: httpx.AsyncClient, sally: str, database: Database, field: str, value: str
) -> None:
    fields: dict[str, object] = {field: value}
    if field == "body_text":
        fields["body_html"] = None
    r = await api_send(client, sally, **fields)
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid draft"
    (message,) = r.json()["errors"][field]
    assert "surrogate" in message
    assert no_messages(database)


SEPARATORS = ["\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029", "\r\n", "\t", "\x00"]


@pytest.mark.parametrize("separator", SEPARATORS, ids=[f"U+{ord(c[0]):04X}" for c in SEPARATORS])
async def test_subject_with_a_line_separator_is_refused_by_the_api_not_queued_to_fail(
    client: httpx.AsyncClient, sally: str, database: Database, separator: str
) -> None:
    r = await api_send(client, sally, subject=f"Invoice{separator}X-Injected: 1")
    assert r.status_code == 422, r.text
    (message,) = r.json()["errors"]["subject"]
    assert f"U+{ord(separator[0]):04X}" in message
    assert no_messages(database)


@pytest.mark.parametrize("character", ["\x0b", "\x1b", "\x85", "\u2028"])
async def test_a_control_character_in_a_recipients_name_is_refused_not_rewritten(
    client: httpx.AsyncClient, sally: str, database: Database, character: str
) -> None:
    r = await api_send(client, sally, cc=f"Bob{character}Bcc <bob@example.org>")
    assert r.status_code == 422, r.text
    (message,) = r.json()["errors"]["cc"]
    assert f"U+{ord(character):04X}" in message
    assert no_messages(database)


@pytest.mark.parametrize("separator", ["\x0b", "\x1c", "\x85", "\u2028"])
async def test_subject_with_a_line_separator_is_refused_by_compose_with_the_draft_kept(
    client: httpx.AsyncClient, sally: str, database: Database, separator: str
) -> None:
    r = await compose(client, sally, subject=f"Invoice{separator}X-Injected: 1")
    assert r.status_code == 422
    (message,) = field_errors_of(r.text, "subject")
    assert "control characters" in message
    assert textarea(r.text, "body_html") == BODY
    assert 'value="ann@example.org"' in r.text
    assert no_messages(database)


async def test_nul_in_a_body_is_a_field_error_and_other_control_characters_are_text(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await api_send(client, sally, body_html=None, body_text="Total:\x00 0")
    assert r.status_code == 422
    assert "NUL" in r.json()["errors"]["body_text"][0]
    r = await compose(client, sally, body_html="<p>Total:\x00 0</p>")
    assert r.status_code == 422
    assert any("NUL" in m for m in field_errors_of(r.text, "body"))
    assert no_messages(database)
    # A form feed, a tab or a vertical tab is text a body may hold.
    r = await api_send(client, sally, body_html=None, body_text="Page 1\x0cPage 2\tend\x0b")
    assert r.status_code == 202, r.text


async def test_a_sender_name_stored_before_names_were_checked_stops_the_send_at_compose(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    with database.unit_of_work() as s:
        s.execute(update(MailboxConnection).values(sender_name="Sally\r\nBcc: victim@evil.example"))
    r = await compose(client, sally)
    assert r.status_code == 422
    assert any("Settings" in m for m in field_errors_of(r.text, "sender_name"))
    assert textarea(r.text, "body_html") == BODY
    r = await api_send(client, sally)
    assert r.status_code == 422
    assert "sender_name" in r.json()["errors"]
    assert no_messages(database)


# ------------------------------------------------------------------ one's own address


async def test_a_copy_to_ones_own_address_is_sent_untracked_so_reading_it_is_no_open(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    with database.unit_of_work() as s:
        s.execute(update(MailboxConnection).values(sender_address="sally@bücher.example"))
    r = await compose(
        client,
        sally,
        to="ann@example.org",
        cc="SALLY@EXAMPLE.COM",  # the account's address, in other case
        bcc="Sally <Sally@XN--BCHER-KVA.example>",  # the mailbox's, IDN domain in ASCII
    )
    assert r.status_code == 303, r.text
    with database.sessions() as s:
        copies = {
            c.address.lower(): c
            for c in s.scalars(select(RecipientCopy).options(selectinload(RecipientCopy.body)))
        }
    assert set(copies) == {"ann@example.org", "sally@example.com", "sally@xn--bcher-kva.example"}
    assert copies["ann@example.org"].decision == "tracked"
    assert "/t/o/" in (copies["ann@example.org"].html_body or "")
    for own in ("sally@example.com", "sally@xn--bcher-kva.example"):
        copy = copies[own]
        assert copy.decision == "own_address"
        assert copy.decision_reason == (
            "Sent to your own address: not tracked, so your own reading never counts as an open."
        )
        assert (copy.open_tracked, copy.links_tracked) == (False, False)
        assert copy.html_body == BODY  # no pixel, the link as written
        assert "/t/" not in (copy.text_body or "")
    page = await client.get(r.headers["location"])
    assert "not tracked (your own address)" in page.text
    assert "your own reading never counts as an open" in page.text


# ------------------------------------------------------------------ size


async def test_compose_says_how_large_a_message_may_be(
    client: httpx.AsyncClient, sally: str
) -> None:
    page = await client.get("/compose")
    assert "A message can be up to 5 MB." in page.text


@pytest.mark.parametrize("multipart", [False, True], ids=["urlencoded", "multipart"])
async def test_a_two_megabyte_draft_is_sent_not_answered_with_a_bare_400(
    client: httpx.AsyncClient, sally: str, database: Database, multipart: bool
) -> None:
    body = "<p>" + "Lorem ipsum dolor sit amet. " * 72_000 + "</p>"
    assert len(body.encode()) > 2_000_000
    if multipart:
        r = await compose_multipart(client, sally, body_html=body)
    else:
        r = await compose(client, sally, body_html=body)
    assert r.status_code == 303, r.text[:500]
    with database.sessions() as s:
        assert s.scalars(select(Message.body_html)).one() == body


async def test_the_api_and_compose_refuse_the_same_body_at_the_same_limit(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    # 2,500,001 characters: far fewer than the 5,000,000 characters the API took
    # before, and one octet of UTF-8 over the limit.
    body = "é" * (LIMIT // 2) + "x"
    r = await api_send(client, sally, body_html=None, body_text=body)
    assert r.status_code == 422
    (api_message,) = r.json()["errors"]["body_text"]
    assert "up to 5 MB" in api_message
    r = await compose(client, sally, body_format="text", body_html="", body_text=body)
    assert r.status_code == 422
    assert field_errors_of(r.text, "body") == [api_message]
    assert textarea(r.text, "body_text") == body  # the draft is kept
    assert 'value="Pricing"' in r.text
    assert no_messages(database)


async def test_a_compose_form_with_a_file_gets_the_compose_page_with_the_reason(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await client.post(
        "/compose",
        data={"csrf_token": sally, "to": "ann@example.org", "subject": "Pricing"},
        files={"body_html": ("body.html", b"<p>Hello</p>", "text/html")},
    )
    assert r.status_code == 400
    assert 'action="/compose"' in r.text
    (message,) = field_errors_of(r.text, "body")
    assert "could not be read" in message
    assert no_messages(database)
