"""Attachments: sent in every copy (To, Cc, Bcc and the Sent folder's) with their octets
intact, listed on the email's page and in the API, downloadable by the sender only, and
refused with a clear message at the field (the draft kept) when empty or too big."""

from __future__ import annotations

import base64
import email.policy
import html
import os
import re
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser

import pytest
import pytest_asyncio
from sqlalchemy import delete, func, select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings, send_request_room
from mailbeacon.db import Database
from mailbeacon.mail.attachments import (
    AttachmentFile,
    checked_files,
    clean_content_type,
    clean_filename,
    size_text,
)
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.mail.mime import CopyTemplate, VisibleHeaders, build_copy_message
from mailbeacon.mail.sent_copy import SentCopies
from mailbeacon.models import DemoMessage, Message, MessageAttachment
from mailbeacon.runtime import Runtime
from tests.client import make_client, sign_in, use_demo_mailbox
from tests.factories.accounts import create_user

# A proposal whose octets cover every byte value, and a price list with a name that
# needs RFC 2231 to travel in a header.
PROPOSAL = bytes(range(256)) * 40 + os.urandom(3000)
PRICES = "Produkt;Preis\r\nBeacon Pro;1.200 €\r\n".encode()
PROPOSAL_NAME = "Proposal 2027.pdf"
PRICES_NAME = "Preisliste für Müller – Q1.csv"


# ------------------------------------------------------------------ rules (no database)


def test_names_lose_folders_controls_and_quotes_and_keep_their_extension() -> None:
    assert clean_filename("C:\\Users\\sally\\Desktop\\offer.pdf") == "offer.pdf"
    assert clean_filename("../../etc/passwd") == "passwd"
    assert clean_filename('a"b\r\nc\u202e.exe') == "a'b c .exe"
    long = "x" * 300 + ".pdf"
    assert len(clean_filename(long)) == 200
    assert clean_filename(long).endswith(".pdf")
    assert clean_filename("  ") == "attachment"


def test_content_types_are_the_uploaders_made_safe() -> None:
    assert clean_content_type("Application/PDF; name=x", "x.pdf") == "application/pdf"
    assert clean_content_type("", "prices.csv") == "text/csv"
    assert clean_content_type("not a type", "blob") == "application/octet-stream"
    # A part that would be read as the email's own structure is sent as opaque octets.
    assert clean_content_type("multipart/mixed", "x") == "application/octet-stream"
    assert clean_content_type("message/rfc822", "x.eml") == "application/octet-stream"
    assert clean_content_type("text/html\r\nX-Evil: 1", "x.html") == "text/html"


def test_an_empty_file_and_too_much_are_refused_in_one_sentence_each() -> None:
    files = [
        AttachmentFile("empty.txt", "text/plain", b""),
        AttachmentFile("a.bin", "", b"x" * 700),
        AttachmentFile("b.bin", "", b"x" * 400),
    ]
    kept, problems = checked_files(files, 1000)
    assert [f.filename for f in kept] == ["a.bin", "b.bin"]
    assert problems == [
        "“empty.txt” is empty (0 bytes): it was not attached.",
        "The attachments come to 2 KB; an email can carry at most 1 KB of files.",
    ]
    assert size_text(20_000_000) == "20 MB"
    assert size_text(20_000_001) == "20.1 MB"


def test_the_send_request_limit_leaves_room_for_the_attachments() -> None:
    settings = Settings()
    assert send_request_room(settings.MAX_ATTACHMENT_BYTES) <= settings.MAX_SEND_REQUEST_BYTES
    # 20 MB of files, base64 in JSON, are about 26.7 MB of request on their own.
    assert send_request_room(20_000_000) > 26_666_668
    with pytest.raises(ValueError, match="MAX_SEND_REQUEST_BYTES"):
        Settings(MAX_ATTACHMENT_BYTES=50_000_000, MAX_SEND_REQUEST_BYTES=32 * 1024 * 1024)


def _headers() -> VisibleHeaders:
    return VisibleHeaders(
        sender_name="Sally",
        sender_address="sally@example.com",
        to="Ann <ann@example.org>",
        cc="",
        subject="Our proposal",
        date=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
        message_id="<abc@example.com>",
    )


FILES = [
    AttachmentFile(PROPOSAL_NAME, "application/pdf", PROPOSAL),
    AttachmentFile(PRICES_NAME, "text/csv", PRICES),
]


def _parsed(raw: bytes) -> EmailMessage:
    msg = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert isinstance(msg, EmailMessage)
    return msg


@pytest.mark.parametrize("html_body", ["<p>Hello <b>Ann</b></p>", None])
def test_a_copy_is_mixed_with_its_body_first_and_each_file_intact(html_body: str | None) -> None:
    raw = build_copy_message(_headers(), html=html_body, text="Hello Ann", attachments=FILES)
    msg = _parsed(raw)
    assert msg.get_content_type() == "multipart/mixed"
    first = next(msg.iter_parts())
    assert first.get_content_type() == ("multipart/alternative" if html_body else "text/plain")
    body = msg.get_body(preferencelist=("plain",))
    assert body is not None and body.get_content().strip() == "Hello Ann"
    files = list(msg.iter_attachments())
    assert [(f.get_filename(), f.get_content_type()) for f in files] == [
        (PROPOSAL_NAME, "application/pdf"),
        (PRICES_NAME, "text/csv"),
    ]
    assert [f.get_payload(decode=True) for f in files] == [PROPOSAL, PRICES]
    assert all(f.get_content_disposition() == "attachment" for f in files)
    # The name that is not ASCII travels as RFC 2231 parameters, the header stays 7-bit.
    assert b"filename*" in raw and "Müller".encode() not in raw
    assert raw.count(b"MIME-Version") == 1


def test_the_template_gives_the_copy_built_in_one_piece() -> None:
    boundary = "=_mb_" + "0" * 24  # as long as the random ones: the same folding
    template = CopyTemplate.build(_headers(), has_html=True, attachments=FILES)
    rendered = template.render(html="<p>Hi</p>", text="Hi")
    whole = build_copy_message(
        _headers(), html="<p>Hi</p>", text="Hi", attachments=FILES, boundary=boundary
    )

    def same(raw: bytes) -> bytes:
        return re.sub(rb"=_mb_[0-9a-z]+", b"B", raw)

    assert same(rendered) == same(whole)


# ------------------------------------------------------------------ through the app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _with_demo_mailbox(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    """The app with its demo mailbox (aiosmtpd on loopback) listening, as `serve` runs it."""
    runtime = Runtime.from_settings(settings.model_copy(update={"DEMO_SMTP_PORT": free_port()}))
    application = MailbeaconApp(runtime)
    server = DemoSmtpServer(runtime.database, port=runtime.settings.DEMO_SMTP_PORT)
    await server.start()
    yield application
    await server.stop()
    runtime.database.dispose()


@pytest_asyncio.fixture
async def demo_app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    """The attachment limit at 100 KB, so that "too big" needs no large upload."""
    async for application in _with_demo_mailbox(
        settings.model_copy(update={"MAX_ATTACHMENT_BYTES": 100_000})
    ):
        yield application


@pytest_asyncio.fixture
async def default_demo_app(settings: Settings) -> AsyncIterator[MailbeaconApp]:
    """The limits as shipped."""
    async for application in _with_demo_mailbox(settings):
        yield application


def delivered(database: Database) -> dict[str, EmailMessage]:
    with database.sessions() as s:
        return {d.recipient: _parsed(d.raw) for d in s.scalars(select(DemoMessage))}


def files_in(msg: EmailMessage) -> list[tuple[str | None, str, bytes]]:
    out = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        assert isinstance(payload, bytes)
        out.append((part.get_filename(), part.get_content_type(), payload))
    return out


@pytest.mark.asyncio
async def test_the_api_sends_files_in_every_copy_and_lists_them(
    demo_app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    create_user(database, "otto@example.com", org="Acme", name="Otto")
    async with make_client(demo_app) as sally, make_client(demo_app) as otto:
        csrf = await sign_in(sally)
        await use_demo_mailbox(sally, csrf)
        r = await sally.post(
            "/api/messages",
            headers={"x-csrf-token": csrf},
            json={
                "to": "ann@example.org",
                "cc": "bob@example.com",
                "bcc": "carol@example.net",
                "subject": "Our proposal",
                "body_html": '<p>Here is <a href="https://example.com/p">the proposal</a>.</p>',
                "attachments": [
                    {
                        "filename": PROPOSAL_NAME,
                        "content_type": "application/pdf",
                        "data": base64.b64encode(PROPOSAL).decode(),
                    },
                    {"filename": PRICES_NAME, "data": base64.b64encode(PRICES).decode()},
                ],
            },
        )
        assert r.status_code == 202, r.text
        sent = r.json()
        listed = [(a["filename"], a["content_type"], a["size"]) for a in sent["attachments"]]
        assert listed == [
            (PROPOSAL_NAME, "application/pdf", len(PROPOSAL)),
            (PRICES_NAME, "text/csv", len(PRICES)),  # guessed from the name
        ]
        assert await demo_app.runtime.make_outbox_worker().run_once() == 3

        copies = delivered(database)
        assert set(copies) == {"ann@example.org", "bob@example.com", "carol@example.net"}
        for msg in copies.values():
            assert files_in(msg) == [
                (PROPOSAL_NAME, "application/pdf", PROPOSAL),
                (PRICES_NAME, "text/csv", PRICES),
            ]
            # Each copy still has its own tracking in its body.
            body = msg.get_body(preferencelist=("html",))
            assert body is not None and "/t/c/" in body.get_content()

        # The Sent folder's copy: the same files, no pixel.
        with database.sessions() as s:
            raw = SentCopies().sent_copy(s, sent["id"])
        assert raw is not None
        sent_copy = _parsed(raw)
        assert [f[2] for f in files_in(sent_copy)] == [PROPOSAL, PRICES]
        assert b"/t/o/" not in raw

        detail = (await sally.get(f"/api/mail/{sent['id']}")).json()
        assert [a["filename"] for a in detail["attachments"]] == [PROPOSAL_NAME, PRICES_NAME]
        page = await sally.get(f"/mail/{sent['id']}")
        assert PROPOSAL_NAME in page.text
        assert html.escape(PRICES_NAME) in page.text
        assert "10.2 KB" not in page.text  # sizes rounded up, never down
        assert size_text(len(PROPOSAL)) in page.text

        # A download: the octets, saved and never shown, for the sender only.
        first = detail["attachments"][0]["id"]
        download = await sally.get(f"/mail/{sent['id']}/attachments/{first}")
        assert download.status_code == 200
        assert download.content == PROPOSAL
        assert download.headers["content-disposition"].startswith("attachment;")
        assert download.headers["x-content-type-options"] == "nosniff"
        second = detail["attachments"][1]["id"]
        named = await sally.get(f"/mail/{sent['id']}/attachments/{second}")
        assert (
            "filename*=UTF-8''Preisliste%20f%C3%BCr%20M%C3%BCller"
            in (named.headers["content-disposition"])
        )
        await sign_in(otto, "otto@example.com")
        assert (await otto.get(f"/mail/{sent['id']}/attachments/{first}")).status_code == 404
        assert (await otto.get(f"/api/mail/{sent['id']}")).status_code == 404

    # The files belong to the email: they go when it goes (the foreign key cascades).
    with database.unit_of_work() as s:
        s.execute(delete(Message).where(Message.id == sent["id"]))
    with database.sessions() as s:
        assert s.scalar(select(func.count()).select_from(MessageAttachment)) == 0


@pytest.mark.asyncio
async def test_compose_sends_uploaded_files_to_the_demo_inbox(
    demo_app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    async with make_client(demo_app) as sally:
        csrf = await sign_in(sally)
        await use_demo_mailbox(sally, csrf)
        page = await sally.get("/compose")
        assert 'enctype="multipart/form-data"' in page.text
        assert "Up to 100 KB of files together" in page.text
        r = await sally.post(
            "/compose",
            data={
                "csrf_token": csrf,
                "to": "ann@example.org",
                "subject": "Prices",
                "body_format": "text",
                "body_text": "The price list is attached.",
            },
            files=[
                ("attachments", (PRICES_NAME, PRICES, "text/csv")),
                ("attachments", (PROPOSAL_NAME, PROPOSAL, "application/pdf")),
                # A file field with nothing chosen, as browsers send it.
                ("attachments", ("", b"", "application/octet-stream")),
            ],
        )
        assert r.status_code == 303, r.text
        assert await demo_app.runtime.make_outbox_worker().run_once() == 1
        ann = delivered(database)["ann@example.org"]
        assert files_in(ann) == [
            (PRICES_NAME, "text/csv", PRICES),
            (PROPOSAL_NAME, "application/pdf", PROPOSAL),
        ]
        with database.sessions() as s:
            demo_id = s.scalars(select(DemoMessage.id)).one()
        inbox_page = await sally.get(f"/demo-inbox/{demo_id}")
        assert PROPOSAL_NAME in inbox_page.text
        saved = await sally.get(f"/demo-inbox/{demo_id}/attachments/1")
        assert saved.content == PROPOSAL
        assert saved.headers["content-disposition"].startswith("attachment;")


@pytest.mark.asyncio
async def test_too_big_or_empty_files_are_refused_at_the_field_and_the_draft_kept(
    demo_app: MailbeaconApp, database: Database
) -> None:
    create_user(database)
    async with make_client(demo_app) as sally:
        csrf = await sign_in(sally)
        await use_demo_mailbox(sally, csrf)
        r = await sally.post(
            "/compose",
            data={
                "csrf_token": csrf,
                "to": "ann@example.org",
                "subject": "Our catalogue",
                "body_format": "text",
                "body_text": "Everything we sell.",
            },
            files=[
                ("attachments", ("catalogue.pdf", b"x" * 150_000, "application/pdf")),
                ("attachments", ("notes.txt", b"", "text/plain")),
            ],
        )
        assert r.status_code == 422
        text = html.unescape(r.text)
        assert "The attachments come to 150 KB; an email can carry at most 100 KB of files." in (
            text
        )
        assert "“notes.txt” is empty (0 bytes): it was not attached." in text
        assert "Attach again the files you had chosen (“catalogue.pdf”)" in text
        assert 'id="attachments-error-1"' in r.text
        assert 'value="Our catalogue"' in r.text
        assert "Everything we sell." in r.text
        assert 'href="#attachments">Attachments</a>' in r.text

        api = await sally.post(
            "/api/messages",
            headers={"x-csrf-token": csrf},
            json={
                "to": "ann@example.org",
                "body_text": "x",
                "attachments": [
                    {"filename": "big.bin", "data": base64.b64encode(b"y" * 100_001).decode()}
                ],
            },
        )
        assert api.status_code == 422
        assert api.json()["errors"]["attachments"] == [
            "The attachments come to 101 KB; an email can carry at most 100 KB of files."
        ]
        bad = await sally.post(
            "/api/messages",
            headers={"x-csrf-token": csrf},
            json={
                "to": "ann@example.org",
                "body_text": "x",
                "attachments": [{"filename": "x", "data": "not base64!"}],
            },
        )
        assert bad.status_code == 422
        with database.sessions() as s:
            assert s.scalar(select(func.count()).select_from(Message)) == 0
            assert s.scalar(select(func.count()).select_from(MessageAttachment)) == 0


@pytest.mark.asyncio
async def test_files_up_to_the_default_limit_get_through_every_limit_on_the_way(
    default_demo_app: MailbeaconApp, database: Database
) -> None:
    """20 MB of files, base64 in the JSON request (27 MB), stored, and sent as a 27 MB
    copy: within the request limit and the demo mailbox's message size, and intact."""
    limit = default_demo_app.runtime.settings.MAX_ATTACHMENT_BYTES
    assert limit == 20_000_000
    octets = os.urandom(limit)
    create_user(database)
    async with make_client(default_demo_app) as sally:
        csrf = await sign_in(sally)
        await use_demo_mailbox(sally, csrf)
        page = await sally.get("/compose")
        assert "Up to 20 MB of files together" in page.text
        r = await sally.post(
            "/api/messages",
            headers={"x-csrf-token": csrf},
            json={
                "to": "ann@example.org",
                "subject": "The whole catalogue",
                "body_text": "Attached.",
                "attachments": [
                    {"filename": "catalogue.bin", "data": base64.b64encode(octets).decode()}
                ],
            },
        )
        assert r.status_code == 202, r.text[:500]
        assert await default_demo_app.runtime.make_outbox_worker().run_once() == 1
        (ann,) = delivered(database).values()
        assert files_in(ann) == [("catalogue.bin", "application/octet-stream", octets)]
        one_more = await sally.post(
            "/api/messages",
            headers={"x-csrf-token": csrf},
            json={
                "to": "ann@example.org",
                "body_text": "x",
                "attachments": [
                    {"filename": "a.bin", "data": base64.b64encode(octets).decode()},
                    {"filename": "b.bin", "data": base64.b64encode(b"1").decode()},
                ],
            },
        )
        assert one_more.status_code == 422
        assert "at most 20 MB of files" in one_more.json()["errors"]["attachments"][0]
