"""MIME of a copy: the per-message template and the one-piece build agree; text from HTML."""

from __future__ import annotations

import email
import email.policy
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.kit.text_urls import find_text_urls
from mailbeacon.mail.mime import (
    CopyTemplate,
    VisibleHeaders,
    build_copy_message,
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
    reference = parse(built.as_bytes())
    assert contents(fast) == contents(reference)
    # The body as given, ending with a line break (the email package adds one if missing).
    assert contents(fast) == (_lf(text), _lf(html))
    assert [(k, str(v)) for k, v in fast.items()] == [(k, str(v)) for k, v in reference.items()]
    assert not fast.defects and not any(p.defects for p in fast.walk())


def _lf(body: str) -> str:
    body = body.replace("\r\n", "\n").replace("\r", "\n")
    return body if body.endswith("\n") else body + "\n"


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
