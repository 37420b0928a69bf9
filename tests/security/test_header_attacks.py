"""Header injection through the subject, the sender name and recipients' names.

An RFC 2047 encoded word can carry CR LF: ``=?utf-8?q?Invoice=0D=0AContent-Type:...?=``.
Python's email package before 3.11.10 / 3.12.5 decoded it and wrote the line breaks back
out (CVE-2024-6923), so the SMTP server received a second Content-Type and a body of the
author's choosing. These tests send through the real outbox worker to a real SMTP server
on loopback (aiosmtpd) and read what arrived, byte for byte.

The Python this suite runs on (3.11.7) is one of the affected releases: the fix must not
depend on the interpreter's email package.
"""

from __future__ import annotations

import base64
import email
import email.header
import email.policy
import email.utils
import re
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from pydantic import ValidationError
from sqlalchemy import select, update

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import CopyStatus, MailboxConnection, Message, RecipientCopy, Security, User
from mailbeacon.runtime import Runtime
from tests.client import sign_in
from tests.factories.accounts import create_user
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer, start_smtp, stop_smtp

INJECTED = "Invoice\r\nContent-Type: text/html\r\n\r\n<h1>Phish</h1>"
Q_WORD = "=?utf-8?q?Invoice=0D=0AContent-Type:_text/html=0D=0A=0D=0A<h1>Phish</h1>?="
B_WORD = "=?utf-8?b?" + base64.b64encode(INJECTED.encode()).decode() + "?="
NAME_Q_WORD = "=?utf-8?q?Sally=0D=0ABcc:_victim@evil.example?="
ENCODED_WORDS = pytest.mark.parametrize("word", [Q_WORD, B_WORD], ids=["q", "b"])

# What the app writes at the top of an HTML copy, in this order.
TOP_FIELDS = ["From", "To", "Subject", "Date", "Message-ID", "MIME-Version", "Content-Type"]


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with a worker that retries at once (no back-off)."""
    return settings.model_copy(update={"SEND_BACKOFF_SECONDS": 0.0, "DEMO_SMTP_PORT": 0})


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[SmtpPeer]:
    peer = await start_smtp(SinkHandler())
    yield peer
    await stop_smtp(peer)


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


def connect_mailbox(database: Database, port: int, sender_name: str = "Sally Seller") -> None:
    """Sally's mailbox: the SMTP sink on loopback."""
    with database.unit_of_work() as s:
        user = s.scalars(select(User).where(User.email == "sally@example.com")).one()
        s.add(
            MailboxConnection(
                user_id=user.id,
                sender_name=sender_name,
                sender_address="sally@example.com",
                smtp_host="127.0.0.1",
                smtp_port=port,
                smtp_security=Security.NONE,
            )
        )


@pytest_asyncio.fixture
async def sally(client: httpx.AsyncClient, database: Database, sink: SmtpPeer) -> str:
    """Sally, signed in, sending through the sink; returns her CSRF token."""
    create_user(database)
    csrf = await sign_in(client)
    connect_mailbox(database, sink.port)
    return csrf


def header_fields(raw: bytes) -> list[tuple[str, str]]:
    """The header fields of received octets as a reader sees them: up to the first blank
    line, folded lines joined (RFC 5322 section 2.2.3)."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    fields: list[tuple[str, str]] = []
    for line in head.split("\r\n"):
        if line[:1] in (" ", "\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + line)
        else:
            name, _, value = line.partition(":")
            fields.append((name, value))
    return fields


def decoded(value: str) -> str:
    """A header value decoded by the stdlib's older, independent decoder."""
    return str(email.header.make_header(email.header.decode_header(value.strip())))


# ------------------------------------------------------------------ refused where typed


@pytest.mark.asyncio
@ENCODED_WORDS
async def test_encoded_word_with_crlf_in_the_subject_is_refused_by_the_api(
    client: httpx.AsyncClient, sally: str, database: Database, word: str
) -> None:
    r = await client.post(
        "/api/messages",
        headers={"x-csrf-token": sally},
        json={"to": "ann@example.org", "subject": word, "body_html": "<p>Pay now</p>"},
    )
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["error"] == "invalid draft"
    assert "encoded word" in body["errors"]["subject"][0]
    with database.sessions() as s:
        assert s.scalars(select(Message)).first() is None


@pytest.mark.asyncio
@pytest.mark.parametrize("field", ["to", "cc", "bcc"])
async def test_encoded_word_in_a_recipients_display_name_is_refused(
    client: httpx.AsyncClient, sally: str, database: Database, field: str
) -> None:
    r = await client.post(
        "/api/messages",
        headers={"x-csrf-token": sally},
        json={
            "to": "ann@example.org",
            field: f'"{NAME_Q_WORD}" <bob@example.org>',
            "subject": "Hello",
            "body_text": "Hi",
        },
    )
    assert r.status_code == 422, r.text
    (message,) = r.json()["errors"][field]
    assert "bob@example.org" in message and "encoded word" in message
    with database.sessions() as s:
        assert s.scalars(select(Message)).first() is None


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "name", [NAME_Q_WORD, "Sally\r\nBcc: victim@evil.example", "Sally\x0bSeller"]
)
async def test_sender_name_that_splits_the_from_header_is_refused_in_settings(
    client: httpx.AsyncClient, sally: str, database: Database, sink: SmtpPeer, name: str
) -> None:
    r = await client.post(
        "/settings/email-sync",
        data={
            "csrf_token": sally,
            "sender_name": name,
            "sender_address": "sally@example.com",
            "smtp_host": "127.0.0.1",
            "smtp_port": str(sink.port),
            "smtp_security": "none",
            "smtp_username": "",
            "smtp_password": "",
        },
    )
    assert r.status_code == 422, r.status_code
    assert re.search(r'class="field-error"[^>]*>[^<]*(encoded word|control characters)', r.text)
    with database.sessions() as s:
        assert s.scalars(select(MailboxConnection.sender_name)).one() == "Sally Seller"


# ------------------------------------------------------------------ never on the wire


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("subject", Q_WORD),
        ("subject", B_WORD),
        ("subject", INJECTED),
        ("sender_name", NAME_Q_WORD),
        ("to_header", f'"{NAME_Q_WORD}" <ann@example.org>'),
        ("cc_header", '"=?utf-8?b?eA0KWC1JbmplY3RlZDogMQ==?=" <carl@example.org>'),
    ],
    ids=["subject-q", "subject-b", "subject-raw-crlf", "sender-name", "to-name", "cc-name"],
)
async def test_stored_header_injection_never_reaches_the_smtp_server(
    database: Database, runtime: Runtime, sink: SmtpPeer, column: str, value: str
) -> None:
    """A message stored before input was checked (or written by anything but the
    service) is refused by the header check, before any SMTP transaction."""
    create_user(database)
    connect_mailbox(database, sink.port)
    with database.unit_of_work() as s:
        user = s.scalars(select(User)).one()
        message_id = plan(s, runtime, user, subject="Invoice").id
        s.execute(update(Message).where(Message.id == message_id).values({column: value}))

    await runtime.make_outbox_worker().run_once()

    handler: SinkHandler = sink.handler
    assert handler.accepted == [], handler.accepted[0].data.decode()
    assert handler.data_calls == 0
    with database.sessions() as s:
        copy = s.scalars(select(RecipientCopy)).one()
    assert copy.status == CopyStatus.FAILED
    assert "its headers would be malformed" in copy.smtp_reply
    # Failed at once: building the same bytes again could only fail again.
    assert copy.attempts == 1 and "gave up" not in copy.smtp_reply


@pytest.mark.asyncio
async def test_what_arrives_has_exactly_our_headers_and_the_subject_as_written(
    client: httpx.AsyncClient, sally: str, database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    subject = (
        'Re: "Q3" offer =? 50% <off> ünïcödé 日本語 — and a word far too long to fold: ' + "x" * 120
    )
    r = await client.post(
        "/api/messages",
        headers={"x-csrf-token": sally},
        json={
            "to": '"Doe, Jane" <jane@example.org>, Jöhn Smïth <john@example.net>',
            "subject": subject,
            "body_html": "<p>Hello</p>",
        },
    )
    assert r.status_code == 202, r.text
    assert await runtime.make_outbox_worker().run_once() == 2

    handler: SinkHandler = sink.handler
    assert len(handler.accepted) == 2
    for received in handler.accepted:
        raw = received.data
        fields = header_fields(raw)
        assert [name for name, _ in fields] == TOP_FIELDS
        values = dict(fields)
        assert decoded(values["Subject"]) == subject
        assert decoded(values["From"]) == "Sally Seller <sally@example.com>"
        assert values["Content-Type"].strip().startswith("multipart/alternative;")
        assert raw.isascii()
        assert max(len(line) for line in raw.split(b"\r\n")) <= 78
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Subject"] == subject
        assert [a.display_name for a in msg["To"].addresses] == ["Doe, Jane", "Jöhn Smïth"]
        assert not msg.defects and not any(p.defects for p in msg.walk())
        assert [p.get_content_type() for p in msg.walk()] == [
            "multipart/alternative",
            "text/plain",
            "text/html",
        ]


def test_a_user_name_that_would_split_the_from_header_is_refused_at_creation() -> None:
    # The name becomes the demo mailbox's sender name, written into every From header.
    with pytest.raises(ValidationError, match=r"(?i)encoded|control"):
        NewUser(
            email="sally@example.com",
            name="=?utf-8?q?Sally=0D=0ABcc:_all@example.org?=",
            password="Correct horse battery staple 42",
        )
    with pytest.raises(ValidationError):
        NewUser(email="sally@example.com", name="Sally\r\nBcc: x", password="x" * 8 + "Q!9z")
