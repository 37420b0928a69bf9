"""People shown as the email named them (To and Cc, a reply's From, else the contact),
and international domains in their own script, while addresses stay stored in ASCII."""

from __future__ import annotations

import html
import re
import time
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.display import (
    display_name,
    names_in_headers,
    person,
    unicode_address,
    unicode_domain,
)
from mailbeacon.models import Message, RecipientCopy
from mailbeacon.sync import repository as sync_repository
from mailbeacon.sync.receiving import Arrival
from tests.client import sign_in, use_demo_mailbox
from tests.factories.accounts import create_user
from tests.factories.hits import THUNDERBIRD, hit, record
from tests.factories.mail import send_mail


def test_punycode_domains_are_shown_in_unicode_and_nothing_else_changes() -> None:
    assert unicode_domain("xn--bcher-kva.de") == "bücher.de"
    assert unicode_address("Jöhn <john@xn--bcher-kva.de>, b@Example.org") == (
        "Jöhn <john@bücher.de>, b@Example.org"
    )
    # Not valid IDNA 2008: shown as stored, never made into another domain.
    assert unicode_address("x@xn--zz.example") == "x@xn--zz.example"
    assert unicode_address("plain@example.org") == "plain@example.org"


def test_names_come_from_the_headers_then_the_contact() -> None:
    names = names_in_headers(
        'Jöhn Müller <john@xn--bcher-kva.de>, "Buyer, Ann" <ann@example.org>', "bob@example.com"
    )
    assert names == {"john@xn--bcher-kva.de": "Jöhn Müller", "ann@example.org": "Buyer, Ann"}
    assert display_name("ANN@example.org", names, "Annie") == "Buyer, Ann"
    assert display_name("bob@example.com", names, "Bob Contact") == "Bob Contact"
    assert display_name("bob@example.com", names, "") == ""
    assert person("Jöhn Müller", "john@xn--bcher-kva.de") == "Jöhn Müller (john@bücher.de)"
    assert person("", "john@xn--bcher-kva.de") == "john@bücher.de"


def shown(page: str) -> str:
    """What a person reads (text and titles); data attributes keep the stored address."""
    return re.sub(r'data-[a-z-]+="[^"]*"', "", page)


def _reply(sender: str, to: str, subject: str, in_reply_to: str) -> bytes:
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = make_msgid(domain="example.org")
    mail["In-Reply-To"] = in_reply_to
    mail["References"] = in_reply_to
    mail.set_content("Thursday works.")
    return mail.as_bytes()


@pytest.mark.asyncio
async def test_pages_notifications_and_api_show_names_and_unicode_domains(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> None:
    runtime = app.runtime
    user_id = create_user(database)
    csrf = await sign_in(client)
    await use_demo_mailbox(client, csrf)
    # Dan's contact gets his name from the first email; the second reaches him by Bcc.
    send_mail(database, runtime, user_id, ("Dan Dealer <dan@example.net>",), subject="Intro")
    sent = send_mail(
        database,
        runtime,
        user_id,
        ("Jöhn Müller <john@bücher.de>", "ann@example.org"),
        subject="Pricing",
        bcc=("dan@example.net",),
    )
    with database.sessions() as s:
        stored = set(s.scalars(select(RecipientCopy.address)))
        header = s.get_one(Message, sent.message_id).message_id_header
    # Stored as sent: the domain in punycode.
    assert "john@xn--bcher-kva.de" in stored
    john = sent.copies["john@xn--bcher-kva.de"]
    dan = sent.copies["dan@example.net"]
    t0 = time.time() - 60
    record(
        runtime,
        hit(john, at=t0, ua=THUNDERBIRD),
        hit(dan, at=t0 + 5, ua=THUNDERBIRD),
        hit(john, "click", at=t0 + 10, position=0),
    )
    with database.unit_of_work() as s:
        runtime.receiver.receive(
            s,
            sync_repository.owner(s, user_id),
            [
                Arrival(
                    _reply("Jöhn M. <john@xn--bcher-kva.de>", "sally@example.com", "Re: Pricing",
                           header),
                    utcnow(),
                )
            ],
        )  # fmt: skip

    detail = (await client.get(f"/api/mail/{sent.message_id}")).json()
    by_address = {r["address"]: r for r in detail["recipients"]}
    assert by_address["john@xn--bcher-kva.de"]["name"] == "Jöhn Müller"
    assert by_address["ann@example.org"]["name"] == ""
    assert by_address["dan@example.net"]["name"] == "Dan Dealer"  # from the contact
    names = {e["recipient_name"] for e in detail["timeline"]}
    assert names == {"Jöhn Müller", "Dan Dealer"}

    page = html.unescape((await client.get(f"/mail/{sent.message_id}")).text)
    assert "xn--" not in shown(page)
    assert "Jöhn Müller <john@bücher.de>" in page  # the To line
    assert 'Jöhn Müller</span> <span class="muted small">john@bücher.de' in page
    assert "Dan Dealer" in page
    assert "Jöhn M.</strong>" in page  # the reply, by its From

    tab = html.unescape((await client.get("/mail")).text)
    assert "xn--" not in shown(tab)
    assert 'title="john@bücher.de">Jöhn Müller</strong>' in tab  # in the hover list
    assert '>Jöhn Müller<span class="visually-hidden"> (opened)' in tab

    notes = (await client.get("/api/notifications")).json()["items"]
    titles = {n["title"] for n in notes}
    assert "Jöhn Müller opened “Pricing”" in titles
    assert "Dan Dealer opened “Pricing”" in titles
    assert any(t.startswith("Jöhn Müller clicked") for t in titles)
    assert "Jöhn M. replied to “Pricing”" in titles
    assert not any("xn--" in t for t in titles)
