"""MIME of a copy: the header block we write, the per-message template and the one-piece
build agree; text from HTML."""

from __future__ import annotations

import base64
import dataclasses
import email
import email.header
import email.policy
import email.utils
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.kit.addresses import Address
from mailbeacon.kit.header_text import header_text_problem
from mailbeacon.kit.text_urls import find_text_urls
from mailbeacon.mail.mime import (
    CopyTemplate,
    MalformedHeaders,
    VisibleHeaders,
    build_copy_message,
    check_header_section,
    header_block,
    html_to_text,
    new_message_id,
)

HEADERS = VisibleHeaders(
    sender_name="Sally Séller",
    sender_address="sally@example.com",
    to='Ann <ann@example.org>, "Doe, Jane" <jane@example.org>',
    cc="Jöhn <john@example.net>",
    subject="Hello wörld, a long subject " + "x" * 90,
    date=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
    message_id=new_message_id("sally@example.com"),
)


def parse(raw: bytes) -> email.message.EmailMessage:
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, email.message.EmailMessage)
    return msg


def contents(msg: email.message.EmailMessage) -> tuple[str, str | None]:
    """The decoded bodies, with the CRLF line ends of the wire turned back into LF."""
    text = msg.get_body(("plain",))
    html = msg.get_body(("html",))
    assert text is not None
    return (
        text.get_content().replace("\r\n", "\n"),
        html.get_content().replace("\r\n", "\n") if html is not None else None,
    )


def test_template_copy_reads_back_with_both_parts_and_the_headers() -> None:
    raw = CopyTemplate.build(HEADERS, has_html=True).render(
        html="<p>Hi é <a href='https://x.example/'>x</a></p>", text="Hi é (https://x.example/)"
    )
    msg = parse(raw)
    assert msg.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    assert msg["From"] == "Sally Séller <sally@example.com>"
    assert msg["To"] == HEADERS.to
    assert msg["Cc"] == HEADERS.cc
    assert msg["Subject"] == HEADERS.subject
    assert msg["Message-ID"] == HEADERS.message_id
    assert msg["Date"].datetime == HEADERS.date
    assert contents(msg) == (
        "Hi é (https://x.example/)\n",
        "<p>Hi é <a href='https://x.example/'>x</a></p>\n",
    )
    assert not msg.defects and not any(p.defects for p in msg.walk())
    # 7-bit clean with short lines: any SMTP server takes it without 8BITMIME.
    assert raw.isascii()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 78


def test_plain_text_copy_is_a_single_part() -> None:
    msg = parse(CopyTemplate.build(HEADERS, has_html=False).render(html=None, text="Just text"))
    assert msg.get_content_type() == "text/plain"
    assert contents(msg) == ("Just text\n", None)


def test_bcc_only_email_shows_undisclosed_recipients() -> None:
    headers = VisibleHeaders("", "sally@example.com", "", "", "Hi", HEADERS.date, "<a@b.example>")
    msg = parse(CopyTemplate.build(headers, has_html=False).render(html=None, text="x"))
    assert msg["To"] == "undisclosed-recipients:;"
    assert msg["Cc"] is None
    assert msg["From"] == "sally@example.com"


_bodies = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=400
)


TEMPLATE = CopyTemplate.build(HEADERS, has_html=True)


@settings(max_examples=150, deadline=None)
@given(html=_bodies, text=_bodies)
def test_template_and_one_piece_build_give_the_same_copy(html: str, text: str) -> None:
    fast = parse(TEMPLATE.render(html=html, text=text))
    built = build_copy_message(HEADERS, html=html, text=text, boundary=fast.get_boundary())
    reference = parse(built)
    assert contents(fast) == contents(reference)
    # The body as given, ending with a line break (the email package adds one if missing).
    assert contents(fast) == (_lf(text), _lf(html))
    assert [(k, str(v)) for k, v in fast.items()] == [(k, str(v)) for k, v in reference.items()]
    assert not fast.defects and not any(p.defects for p in fast.walk())


def _lf(body: str) -> str:
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    return body if body.endswith("\n") else body + "\n"


# ---------------------------------------------------------------- the header block

INJECTED = "Invoice\r\nContent-Type: text/html\r\n\r\n<h1>Phish</h1>"
Q_WORD = "=?utf-8?q?Invoice=0D=0AContent-Type:_text/html=0D=0A=0D=0A<h1>Phish</h1>?="
B_WORD = "=?utf-8?b?" + base64.b64encode(INJECTED.encode()).decode() + "?="
NAME_Q_WORD = "=?utf-8?q?Sally=0D=0ABcc:_victim@evil.example?="

SHORT = VisibleHeaders(
    sender_name="Sally",
    sender_address="sally@example.com",
    to="Ann <ann@example.org>",
    cc="",
    subject="Hello",
    date=datetime(2026, 11, 30, 9, 0, tzinfo=UTC),
    message_id="<abc@example.com>",
)


def header_fields(raw: bytes) -> dict[str, str]:
    """Header fields as a reader sees them: up to the first blank line, folds joined."""
    fields: dict[str, str] = {}
    name = ""
    for line in raw.split(b"\r\n\r\n", 1)[0].decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            fields[name] += line
        else:
            name, _, value = line.partition(":")
            fields[name] = value
    return fields


def decoded(value: str) -> str:
    """A header value as the stdlib's older RFC 2047 decoder reads it."""
    return str(email.header.make_header(email.header.decode_header(value.strip())))


@pytest.mark.parametrize(
    "changes",
    [
        {"subject": Q_WORD},
        {"subject": B_WORD},
        {"subject": INJECTED},
        {"subject": "Invoice\rX-Injected: 1"},
        {"subject": "Invoice\u2028X-Injected: 1"},
        {"sender_name": NAME_Q_WORD},
        {"sender_name": "Sally\nBcc: victim@evil.example"},
        {"to": '"=?utf-8?b?QQ0KWC1JbmplY3RlZDogMQ==?=" <ann@example.org>'},
        {"message_id": "<abc@example.com>\r\nX-Injected: 1"},
        {"sender_address": "sally@example.com>\r\nX-Injected: 1"},
    ],
)
def test_the_header_writer_refuses_what_would_split_a_field(changes: dict[str, str]) -> None:
    with pytest.raises(MalformedHeaders):
        CopyTemplate.build(dataclasses.replace(SHORT, **changes), has_html=True)


@pytest.mark.parametrize(
    "section",
    [
        b"Subject: Invoice\r\nContent-Type: text/html\r\n",  # a field we did not write
        b"Subject: Invoice\nX: 1\r\n",  # a bare LF
        b"Subject: Invoice\rX: 1\r\n",  # a bare CR
        b"Subject: Invoice\r\n \r\n",  # a continuation of nothing but white space
        b"Subject: Invoice\r\n\r\n",  # a blank line inside the block
        b"Subject: Invoic\xc3\xa9\r\n",  # 8-bit
        b"Subject: " + b"x" * 1000 + b"\r\n",  # longer than RFC 5322 allows
        b"Subject: Invoice",  # no line end
        b" Subject: Invoice\r\n",  # a continuation of no field
    ],
)
def test_the_header_check_refuses_any_block_but_the_one_written(section: bytes) -> None:
    with pytest.raises(MalformedHeaders):
        check_header_section(section, ["Subject"])


def test_the_header_check_takes_the_block_written() -> None:
    check_header_section(b"Subject: a\r\n b\r\nDate: x\r\n", ["Subject", "Date"])


_HEADER_TEXT = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp")), max_size=200
).filter(lambda t: header_text_problem(t) is None)


@settings(max_examples=300, deadline=None)
@given(subject=_HEADER_TEXT, name=_HEADER_TEXT)
def test_any_text_the_input_check_lets_through_is_written_as_one_field_each(
    subject: str, name: str
) -> None:
    subject = subject.strip()  # as planning stores it
    name = " ".join(name.split())  # as address parsing leaves a display name
    block = header_block(dataclasses.replace(SHORT, subject=subject, sender_name=name))
    check_header_section(block, ["From", "To", "Subject", "Date", "Message-ID"])
    assert block.isascii()
    assert max(len(line) for line in block.split(b"\r\n")) <= 78
    values = header_fields(block + b"\r\n")
    assert decoded(values["Subject"]) == subject
    phrase, address = email.utils.parseaddr(values["From"])
    assert (decoded(phrase), address) == (name, "sally@example.com")
    msg = parse(block + b"\r\n")
    assert msg["Subject"] == subject
    # The email package's address parser keeps the space between two encoded words of a
    # name (RFC 2047 section 6.2 says to drop it; long names its own writer wrote read back
    # the same way); every character is there.
    assert msg["From"].addresses[0].display_name.replace(" ", "") == name.replace(" ", "")


@settings(max_examples=100, deadline=None)
@given(names=st.lists(_HEADER_TEXT, min_size=1, max_size=5))
def test_recipient_lists_read_back_as_planning_wrote_them(names: list[str]) -> None:
    """To and Cc are stored as planning formats them and written again from their parts."""
    people = [Address(f"p{i}@example.org", " ".join(n.split())) for i, n in enumerate(names)]
    to = ", ".join(p.formatted() for p in people)
    msg = parse(header_block(dataclasses.replace(SHORT, to=to)) + b"\r\n")
    assert [a.addr_spec for a in msg["To"].addresses] == [p.email for p in people]
    assert [a.display_name.replace(" ", "") for a in msg["To"].addresses] == [
        p.name.replace(" ", "") for p in people
    ]


def test_the_marks_of_a_template_cannot_be_written_by_its_author() -> None:
    headers = dataclasses.replace(SHORT, subject="MAILBEACONTEXTBODYMARK MAILBEACONHTMLBODYMARK")
    msg = parse(CopyTemplate.build(headers, has_html=True).render(html="<p>h</p>", text="t"))
    assert msg["Subject"] == headers.subject
    assert contents(msg) == ("t\n", "<p>h</p>\n")


def test_message_ids_use_the_ascii_form_of_the_senders_domain() -> None:
    assert new_message_id("Sally@Bücher.example").endswith("@xn--bcher-kva.example>")
    assert new_message_id("not an address").endswith("@mailbeacon.invalid>")


def test_html_to_text_keeps_link_targets_and_structure() -> None:
    html = """<html><head><title>T</title><style>p { color: red }</style></head><body>
    <h1>Big   news</h1>
    <p>Hello <b>Ann</b>,<br>see our <a href="https://example.com/offer?a=1&amp;b=2">new
    offer</a> or <a href="https://example.com/">https://example.com/</a>,
    <a href="mailto:sales@example.com">write to us</a>.</p>
    <ul><li>one</li><li>two</li></ul>
    <table><tr><td>A</td><td>B</td></tr><tr><td>C</td><td>D</td></tr></table>
    <pre>  kept
    as is</pre>
    <p>&copy; 2026<img src="logo.png" alt="Acme"></p><script>alert(1)</script>
    </body></html>"""
    assert html_to_text(html) == (
        "Big news\n\n"
        "Hello Ann,\n"
        "see our new offer (https://example.com/offer?a=1&b=2) or https://example.com/, "
        "write to us.\n\n"
        "- one\n- two\n\n"
        "A B\nC D\n\n"
        "  kept\n    as is\n\n"
        "© 2026 Acme"
    )


def test_html_to_text_of_nothing_is_empty() -> None:
    assert html_to_text("") == ""
    assert html_to_text("<p> </p><div></div>") == ""


@pytest.mark.parametrize(
    ("html", "text"),
    [
        # A body ends an unclosed head, as in a browser.
        ("<head><title>T</title><body><p>Hi</p>", "Hi"),
        # Frames, plugins and scripting fallbacks are not shown; textarea and xmp are.
        ("<iframe><p>no</p></iframe><noscript>no</noscript>yes", "yes"),
        ("<textarea>a &amp; <b></textarea><xmp>&amp;</xmp>", "a & <b>&amp;"),
        # A new <a> ends the open one, as the HTML parser does.
        ('<a href="https://a.com/">one<a href="https://b.com/">two</a>',
         "one (https://a.com/) two (https://b.com/)"),
        # Deep lists are indented only so far; repeated tags come in one go.
        ("<ul>" * 20 + "<li>deep", "              - deep"),
        ("<ol><li>a<li><li>c</ol>", "1. a\n2.\n3. c"),
        ("a" + "<br>" * 5 + "b" + "<p>" * 3 + "c", "a\n\nb\n\nc"),
        # An unfinished tag drops the rest, as eof-in-tag does.
        ('<p>kept</p><a href="https://x.com/', "kept"),
        ("<p>kept<!-- open", "kept"),
    ],
)  # fmt: skip
def test_html_to_text_follows_the_html_tokenizer(html: str, text: str) -> None:
    assert html_to_text(html) == text


def test_html_to_text_keeps_the_text_past_its_step_limit_without_layout() -> None:
    html = "<p>x</p>" * 40_000 + "<p>end &amp; <b>all</b></p><script>no</script>"
    text = html_to_text(html)
    assert text.startswith("x\n\nx\n\n")
    assert text.endswith("x end & all")
    assert "no" not in text


_HTMLISH = st.lists(
    st.sampled_from(
        ["<a href='https://x.com/'>", "<a href=\"https://e&#10;x.com/a\">", "</a>", "<p>", "</p>",
         "<ul>", "<ol>", "<li>", "</ul>", "<br>", "<pre>", "</pre>", "<td>", "<img alt='i'>",
         "<script>", "</script>", "<head>", "<body>", "<!--", "-->", "<", ">", "&", "&#", "&#x",
         "&amp;", "&#99999999999;", "&copy", '"', "'", " ", "\n", "x", ")", ".", "/", "("]
    ),
    max_size=30,
).map("".join)  # fmt: skip


@given(_HTMLISH)
@settings(max_examples=300)
def test_html_to_text_reads_any_markup_and_its_links_lead_where_the_html_did(html: str) -> None:
    text = html_to_text(html)
    # The markup holds no address but its two links: the text part carries those, whole,
    # as a browser reads them, and nothing else.
    hrefs = {"https://x.com/", "https://ex.com/a"}
    assert {found.url for found in find_text_urls(text)} <= hrefs, text
