"""Compose: switches a screen reader announces as switches, errors said once at their
field, and a question before an email leaves without a subject or a message (the
server asks when JavaScript is off; the API never asks)."""

from __future__ import annotations

import html
import re

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import func, select

from mailbeacon.db import Database
from mailbeacon.models import Message
from tests.client import sign_in, use_demo_mailbox
from tests.factories.accounts import create_user
from tests.web.test_compose import BODY, compose

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def sally(client: httpx.AsyncClient, database: Database) -> str:
    create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    return csrf


def messages(database: Database) -> int:
    with database.sessions() as s:
        return int(s.scalar(select(func.count()).select_from(Message)) or 0)


async def test_the_tracking_options_are_switches_with_their_labels(
    client: httpx.AsyncClient, sally: str
) -> None:
    page = (await client.get("/compose")).text
    for name, label in (
        ("open_tracking", "Enable open tracking"),
        ("link_tracking", "Enable link tracking"),
    ):
        found = re.search(
            rf'<label class="switch"><input type="checkbox" name="{name}" value="true" '
            rf'role="switch" checked> {label}</label>',
            page,
        )
        assert found, name


async def test_an_error_is_one_sentence_at_its_field_without_the_field_repeated(
    client: httpx.AsyncClient, sally: str
) -> None:
    r = await compose(client, sally, to="x", cc="bob@", subject="Hi\x07")
    assert r.status_code == 422
    at_field = re.findall(r'<p class="field-error" id="(\w+)-error-\d">([^<]*)</p>', r.text)
    said = {name: html.unescape(text) for name, text in at_field}
    assert said["to"] == "“x” is not a valid address: an email address must have an @-sign."
    assert said["cc"] == (
        "“bob@” is not a valid address: there must be something after the @-sign."
    )
    assert said["subject"].startswith("Line breaks, tabs and other control characters")
    summary = html.unescape(r.text.split('id="error-summary"')[1].split("</div>")[0])
    assert re.sub(r"<[^>]+>", "", summary).count("To: “x” is not a valid address") == 1
    for text in (summary, *said.values()):
        assert not re.search(r"\b(to|cc|subject): ", text, re.IGNORECASE), text


@pytest.mark.parametrize(
    ("fields", "question"),
    [
        ({"subject": ""}, "This email has no subject."),
        ({"body_html": "<p><br></p>"}, "This email has no message."),
        ({"subject": " ", "body_format": "text", "body_text": "\n"},
         "This email has no subject and no message."),
    ],
)  # fmt: skip
async def test_without_javascript_the_server_asks_before_sending_an_empty_part(
    client: httpx.AsyncClient,
    sally: str,
    database: Database,
    fields: dict[str, str],
    question: str,
) -> None:
    r = await compose(client, sally, **fields)
    assert r.status_code == 200
    assert question in r.text
    assert '<button type="submit" class="button" name="send_anyway" value="true">Send anyway' in (
        r.text
    )
    assert 'value="ann@example.org"' in r.text  # the draft as it was
    assert messages(database) == 0

    sent = await compose(client, sally, **fields, send_anyway="true")
    assert sent.status_code == 303
    assert messages(database) == 1


async def test_the_question_comes_with_the_errors_and_an_image_is_a_message(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await compose(client, sally, to="nobody", subject="")
    assert r.status_code == 422
    assert "This email has no subject." in r.text
    assert "is not a valid address" in r.text
    r = await compose(client, sally, body_html='<p><img src="https://example.com/logo.png"></p>')
    assert r.status_code == 303
    r = await compose(client, sally, body_html=BODY)
    assert r.status_code == 303


async def test_the_api_sends_without_a_subject_and_never_asks(
    client: httpx.AsyncClient, sally: str, database: Database
) -> None:
    r = await client.post(
        "/api/messages",
        headers={"x-csrf-token": sally},
        json={"to": "ann@example.org", "subject": "", "body_text": ""},
    )
    assert r.status_code == 202, r.text
    assert messages(database) == 1
