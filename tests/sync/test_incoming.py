"""Classifying incoming mail: real bounces and automatic replies from public corpora
(tests/sync/samples/SOURCES.md), human replies, and the signs each decision rests on."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.sync.incoming import Action, Kind, classify_message

SAMPLES = Path(__file__).parent / "samples"


def sample(name: str, *, crlf: bool = False) -> bytes:
    data = (SAMPLES / name).read_bytes()
    # IMAP hands messages over with CRLF line ends; the corpora store most with LF.
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") if crlf else data


# -- bounces ------------------------------------------------------------------------

# file, failed recipient, status, words of the diagnostic, the bounced Message-ID
BOUNCES = [
    (
        "postfix.eml",
        "kijitora@example.org",  # Original-Recipient, not the alias it expanded to
        "5.1.1",
        "No such user",
        None,  # the returned message part is empty in this sample
    ),
    (
        "exim.eml",
        "kijitora@example.ed.jp",
        "5.7.0",
        "550 5.7.0 <shironeko@example.jp>... Please use the smtp server of your ISP.",
        "<E1P1ce6-000Egt-GZ@e1.example.org>",
    ),
    (
        "qmail.eml",
        "kijitora@example.ne.jp",
        "5.5.0",
        "550 Unknown user kijitora@example.ne.jp",
        "<000000000.9999999999999.JavaMail.postmaster@mailhub>",
    ),
    (
        "sendmail.eml",
        "userunknown@bouncehammer.jp",
        "5.1.1",
        "550 5.1.1 <userunknown@bouncehammer.jp>... User Unknown",
        "<E1C50F1B-1C83-4820-BC36-AC6FBFBE8568@example.org>",
    ),
    (
        "gmail-legacy.eml",
        "userunknown@example.jp",
        "5.1.1",
        "550 5.1.1 <userunknown@example.jp>... User Unknown",
        "<D992C2C3-F175-4C4D-97E2-53A90E4E5BF5@gmail.com>",
    ),
    (
        "google-workspace.eml",
        "neko-nyaan-cat-meeting@google-groups.example.com",
        "",
        "Smtp server does not advertise AUTH capability",
        "<CAByYQsF5qdTf_h-1AAVPW0RgR1YN+LE=+0Uv9LpQ4aA_myPtCw@mail.gmail.com>",
    ),
    (
        "office365.eml",
        "kijitora@example.com",
        "5.1.0",
        "550 5.1.0 192.0.2.222 is not allowed to send from <example.net> per it's SPF Record.",
        "<000000000000.2222.22222222222200000000@NEKO-NYAAN>",
    ),
    (
        "exchange2007.eml",
        "mikeneko@example.co.jp",
        "5.1.1",
        "550 5.1.1 RESOLVER.ADR.RecipNotFound; not found",
        None,  # Exchange quotes the original headers without its Message-ID here
    ),
    (
        "outlook-com.eml",
        "kijitora@example.jp",
        "5.2.2",
        "550 5.2.2 <kijitora@example.jp>... Mailbox Full",
        "<BLU436-SMTP6645ECA6E7FEFFE86D040BBA770@phx.gbl>",
    ),
    (
        "yahoo.eml",
        "kijitora@example.org",
        "5.1.1",
        "550 5.1.1 <kijitora@example.org>... User Unknown",
        "<6AE6249A-E7A8-4980-862C-F499F6B8E7C5@y.example.co.jp>",
    ),
]


@pytest.mark.parametrize("crlf", [False, True], ids=["as-published", "crlf"])
@pytest.mark.parametrize(("name", "address", "status", "diagnostic", "original"), BOUNCES)
def test_real_bounces_name_the_recipient_status_reason_and_original(
    name: str, address: str, status: str, diagnostic: str, original: str | None, crlf: bool
) -> None:
    message = classify_message(sample(f"bounce/{name}", crlf=crlf))
    assert message.kind == Kind.BOUNCE
    assert message.text is None
    report = message.bounce
    assert report is not None
    [recipient] = report.recipients
    assert recipient.address == address
    assert recipient.action == Action.FAILED and recipient.permanent
    assert recipient.status == status
    assert diagnostic in recipient.diagnostic
    assert "\n" not in recipient.diagnostic and len(recipient.diagnostic) <= 300
    assert report.original_message_id == original


@pytest.mark.parametrize(
    ("name", "standard"),
    [("postfix.eml", True), ("sendmail.eml", True), ("exim.eml", False), ("qmail.eml", False)],
)
def test_standard_reports_are_told_from_free_text_bounces(name: str, standard: bool) -> None:
    report = classify_message(sample(f"bounce/{name}")).bounce
    assert report is not None and report.standard is standard


def dsn(action: str, status: str, diagnostic: str = "smtp; 451 4.2.0 try later") -> bytes:
    return (
        "From: MAILER-DAEMON@mx.example.net (Mail Delivery System)\r\n"
        "To: sam@mb.test\r\n"
        "Subject: Delayed Mail (still being retried)\r\n"
        "Message-ID: <report-1@mx.example.net>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\r\n'
        "\r\n--b\r\nContent-Type: text/plain\r\n\r\nStill trying.\r\n"
        "--b\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.net\r\n\r\n"
        "Final-Recipient: rfc822; dana@example.org\r\n"
        f"Action: {action}\r\nStatus: {status}\r\nDiagnostic-Code: {diagnostic}\r\n"
        "\r\n--b\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        "From: Sam <sam@mb.test>\r\nMessage-ID: <sent-42@mb.test>\r\nSubject: Hello\r\n"
        "\r\n--b--\r\n"
    ).encode()


def test_a_delay_report_is_a_temporary_bounce_matched_by_its_headers_part() -> None:
    message = classify_message(dsn("delayed", "4.2.0"))
    assert message.kind == Kind.BOUNCE
    assert message.bounce is not None
    [recipient] = message.bounce.recipients
    assert (recipient.action, recipient.status, recipient.permanent) == (
        Action.DELAYED,
        "4.2.0",
        False,
    )
    assert recipient.diagnostic == "451 4.2.0 try later"
    assert message.bounce.original_message_id == "<sent-42@mb.test>"
    assert message.bounce.reporting_mta == "mx.example.net"


def test_a_success_report_is_not_a_bounce() -> None:
    message = classify_message(dsn("delivered", "2.0.0", "smtp; 250 2.0.0 OK"))
    assert message.kind != Kind.BOUNCE and message.bounce is None


def test_a_person_answering_about_a_bounce_is_not_a_bounce() -> None:
    raw = (
        b"From: Dana <dana@example.org>\r\nTo: sam@mb.test\r\n"
        b"Subject: Re: Undeliverable: Proposal\r\nIn-Reply-To: <x@mb.test>\r\n\r\n"
        b"Your mail bounced with:\r\n\r\n<bob@example.org>:\r\n"
        b"Remote host said: 550 5.1.1 User unknown\r\n\r\n"
        b"His address is now bob@example.net.\r\n"
    )
    message = classify_message(raw)
    assert message.kind == Kind.REPLY and message.bounce is None


def test_a_bounce_nobody_can_read_stays_a_bounce_with_its_returned_id() -> None:
    raw = (
        b"From: Mail Delivery System <MAILER-DAEMON@mx.example.net>\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\n"
        b"Auto-Submitted: auto-replied\r\n\r\n"
        b"Something went wrong somewhere.\r\n\r\n"
        b"----- Original message -----\r\nMessage-ID: <sent-7@mb.test>\r\n"
    )
    message = classify_message(raw)
    assert (message.kind, message.reason) == (Kind.BOUNCE, "bounce without recipients")
    assert message.bounce is not None and message.bounce.recipients == ()
    assert message.bounce.original_message_id == "<sent-7@mb.test>"


# -- automatic replies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "reason", "words"),
    [
        ("exchange-oof.eml", "exchange: auto-response", "out of the office Friday"),
        ("exchange-oof-2.eml", "exchange: auto-response", "traveling for work"),
        ("icloud-vacation.eml", "x-apple-action: vacation", "only sleeping"),
        ("rfc3834-away.eml", "auto-submitted: auto-replied", "returning to the office"),
        ("mimecast-autoresponder.eml", "auto-submitted: auto-replied", "no longer in use"),
        ("wp-pl-autoreply.eml", "subject", "the cat sat on the mat"),
        ("oneandone-autoreply.eml", "subject and precedence", "endeavour to reply"),
    ],
)
def test_real_automatic_replies_are_recognised(name: str, reason: str, words: str) -> None:
    message = classify_message(sample(f"auto_reply/{name}", crlf=True))
    assert (message.kind, message.reason) == (Kind.AUTO_REPLY, reason)
    assert message.text is not None and words in message.text.new_text


def headers(*lines: str, subject: str = "Your proposal", body: str = "Away.") -> bytes:
    return (
        "From: Dana <dana@example.org>\r\nTo: sam@mb.test\r\n"
        f"Subject: {subject}\r\nMessage-ID: <x1@example.org>\r\n"
        "In-Reply-To: <sent-1@mb.test>\r\n"
        + "".join(f"{line}\r\n" for line in lines)
        + f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ("Auto-Submitted: auto-replied (vacation)", "auto-submitted: auto-replied"),
        ("Auto-Submitted: auto-generated", "auto-submitted: auto-generated"),
        (
            'Auto-Submitted: auto-replied; owner-email="d@example.org"',
            "auto-submitted: auto-replied",
        ),
        ("X-Autoreply: yes", "x-autoreply"),
        ("X-Autorespond: Your message was received", "x-autorespond"),
        ("Precedence: auto_reply", "precedence: auto_reply"),
    ],
)
def test_each_automatic_reply_header_is_enough_alone(extra: str, reason: str) -> None:
    message = classify_message(headers(extra))
    assert (message.kind, message.reason) == (Kind.AUTO_REPLY, reason)


@pytest.mark.parametrize(
    "extra",
    [
        "Auto-Submitted: no",
        "X-Auto-Response-Suppress: All",  # Outlook sets it on ordinary mail
        "X-MS-Exchange-Inbox-Rules-Loop: dana@example.org",  # a rule forwarded it
        "Precedence: bulk",
        "X-Autoreply: no",
    ],
)
def test_weak_or_negative_signs_alone_leave_a_reply_a_reply(extra: str) -> None:
    assert classify_message(headers(extra)).kind == Kind.REPLY


@pytest.mark.parametrize(
    "subject",
    [
        "Automatic reply: Your proposal",  # English (Exchange)
        "Out of Office: Your proposal",
        "Out of Office AutoReply: Your proposal",
        "Auto: Your proposal",
        "Automatische Antwort: Ihr Angebot",  # German
        "Abwesenheitsnotiz: Ihr Angebot",
        "Réponse automatique : Votre proposition",  # French
        "Respuesta automática: Su propuesta",  # Spanish
        "Risposta automatica: La sua proposta",  # Italian
        "Automatisch antwoord: Uw voorstel",  # Dutch
        "Resposta automática: A sua proposta",  # Portuguese
        "Odpowiedź automatyczna: Twoja propozycja",  # Polish
        "[Automatyczna odpowiedź] test",
        "Automatiskt svar: Ditt förslag",  # Swedish
        "Automatisk svar: Dit forslag",  # Danish and Norwegian
        "Fraværende: Dit forslag",
        "Automaattinen vastaus: Ehdotuksesi",  # Finnish
        "Automatická odpověď: Váš návrh",  # Czech
        "Nepřítomnost: Váš návrh",
    ],
)
def test_automatic_reply_subjects_in_european_languages(subject: str) -> None:
    message = classify_message(headers(subject=subject))
    assert (message.kind, message.reason) == (Kind.AUTO_REPLY, "subject")


@pytest.mark.parametrize(
    "subject",
    [
        "Re: Automatic reply: Your proposal",  # a person answering an auto-reply
        "AW: Abwesenheitsnotiz",
        "Re: Out of office next week?",
        "Auto insurance quote",  # "Auto" alone is a word, not a prefix
        "Our out of office policy",  # the phrase, but not at the start
    ],
)
def test_human_subjects_mentioning_absence_stay_replies(subject: str) -> None:
    assert classify_message(headers(subject=subject)).kind == Kind.REPLY


def test_absence_words_count_with_a_machine_header_but_not_on_mailing_lists() -> None:
    subject = "I am on vacation"
    assert classify_message(headers("Precedence: bulk", subject=subject)).kind == Kind.AUTO_REPLY
    listed = headers("Precedence: bulk", "List-Id: <news.example.org>", subject=subject)
    assert classify_message(listed).kind == Kind.REPLY


def test_human_reply_quoting_an_out_of_office_notice_is_a_reply() -> None:
    message = classify_message(sample("reply/en-quotes-out-of-office.eml"))
    assert (message.kind, message.reason) == (Kind.REPLY, "in-reply-to")
    assert message.text is not None
    assert message.text.new_text.startswith("Sorry about the out of office message")
    assert "automatic reply" not in message.text.new_text
    assert "This is an automatic reply." in message.text.full_text


# -- replies ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "new_text", "quoted"),
    [
        (
            "en-gmail.eml",
            "This is a test for inbox replying to a github message.",
            "That way people can tell",
        ),
        (
            "sv-apple-mail.eml",
            "Hej Person A,\n\nUrsäkta mitt sena svar!\n\n"
            "Kan inte se att det står något om vilket företag det gäller?\n\nMvh,\nPerson B",
            "Jag har försökt",
        ),
        (
            "da-reply.eml",
            "Hej Peter,\n\nTak for din mail. Det lyder godt.\n\nMed venlig hilsen\nAnders Andersen",
            "Hvordan går det",
        ),
        ("nl-outlook.eml", "Outlook met een antwoord", "Google Apps Sync"),
        (
            "de-html-outlook.eml",
            "Hallo Sam,\n\ndanke, das Angebot passt. Bitte schicken Sie uns den Vertrag.\n\n"
            "Viele Grüße\nJürgen",
            "anbei unser Angebot",
        ),
        (
            "fr-html-gmail.eml",
            "Bonjour Sam,\n\nMerci pour le devis. Nous validons la première option.\n\nClaire",
            "Voici le devis",
        ),
    ],
)
def test_reply_text_drops_the_quoted_history(name: str, new_text: str, quoted: str) -> None:
    message = classify_message(sample(f"reply/{name}", crlf=True))
    assert message.kind == Kind.REPLY
    assert message.text is not None
    assert message.text.new_text == new_text
    assert quoted not in message.text.new_text
    assert quoted in message.text.full_text


def test_threading_headers_are_normalised_and_ordered() -> None:
    raw = (
        b'From: "Dana, Buyer" <Dana@Example.ORG>\r\n'
        b"To: sam@mb.test\r\nSubject: Re: Hello\r\n"
        b"Date: Tue, 05 Mar 2024 10:15:00 +0100\r\n"
        b"Message-ID: <r1@example.org>\r\n"
        b"In-Reply-To: <b@mb.test> (Sam's message)\r\n"
        b"References: <a@mb.test>\r\n <b@mb.test>\r\n\r\nThanks!\r\n"
    )
    message = classify_message(raw)
    assert message.threading.message_id == "<r1@example.org>"
    assert message.threading.in_reply_to == ("<b@mb.test>",)
    assert message.threading.references == ("<a@mb.test>", "<b@mb.test>")
    assert message.threading.parents == ("<b@mb.test>", "<a@mb.test>")
    assert (message.sender.address, message.sender.name) == ("dana@example.org", "Dana, Buyer")
    assert message.date == dt.datetime(2024, 3, 5, 9, 15, tzinfo=dt.UTC)
    assert message.text is not None and message.text.new_text == "Thanks!"


def test_a_reply_prefix_without_threading_headers_is_still_a_reply() -> None:
    raw = b"From: a@example.org\r\nSubject: SV: Offert\r\n\r\nTack!\r\n"
    message = classify_message(raw)
    assert (message.kind, message.reason) == (Kind.REPLY, "subject")
    assert message.threading.parents == ()


def test_unrelated_mail_is_other() -> None:
    raw = b"From: news@example.org\r\nSubject: Our spring newsletter\r\n\r\nHello\r\n"
    assert classify_message(raw).kind == Kind.OTHER


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SAMPLES.glob("*/*.eml"))),
    st.integers(min_value=0, max_value=10_000),
    st.binary(max_size=40),
)
def test_damaged_mail_never_raises(path: Path, at: int, noise: bytes) -> None:
    data = path.read_bytes()
    at = at % (len(data) + 1)
    # Truncated, spliced with junk, or both: a mailbox holds all kinds.
    for damaged in (data[:at], data[:at] + noise + data[at:]):
        message = classify_message(damaged)
        assert message.kind in Kind


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    assert classify_message(data).kind in Kind
