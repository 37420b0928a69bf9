"""Bytes to text and back: the charset chosen, and every byte given back unchanged."""

from __future__ import annotations

import codecs

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.tracking.charset import decode_html_bytes, encode_html

PAGE = "<html><head>{meta}</head><body><p>{words}</p></body></html>"
WORDS = "Caf\u00e9 \u2013 \u00fcber"


def page(meta: str = "", words: str = WORDS) -> str:
    return PAGE.format(meta=meta, words=words)


@pytest.mark.parametrize(
    ("bom", "encoding"),
    [
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ],
)
def test_byte_order_mark_wins_and_is_kept(bom: bytes, encoding: str) -> None:
    # The meta says windows-1252, the byte order mark says otherwise: the mark wins.
    html = page('<meta charset="windows-1252">')
    data = bom + html.encode(encoding)
    text, found = decode_html_bytes(data)
    assert found == encoding
    assert text == "\ufeff" + html
    assert encode_html(text, found) == data


@pytest.mark.parametrize(
    ("meta", "encoding", "codec", "words"),
    [
        ('<meta charset="iso-8859-15">', "iso-8859-15", "iso8859-15", "Caf\u00e9 \u20ac 5"),
        ("<meta http-equiv='Content-Type' content='text/html; charset=KOI8-R'>", "koi8-r",
         "koi8-r", "\u041f\u0440\u0438\u0432\u0435\u0442"),
        ("<META HTTP-EQUIV=content-type CONTENT=text/html;charset=windows-1250>", "cp1250",
         "cp1250", "P\u0159\u00edli\u0161"),
        # WHATWG reads these labels as windows-1252, which decodes 0x80-0x9f as browsers do.
        ('<meta charset="ISO-8859-1">', "cp1252", "cp1252", WORDS),
        ('<meta charset="us-ascii">', "cp1252", "cp1252", WORDS),
    ],
)  # fmt: skip
def test_declared_charset_is_used(meta: str, encoding: str, codec: str, words: str) -> None:
    html = page(meta, words)
    data = html.encode(encoding)
    text, found = decode_html_bytes(data)
    assert found == codec
    assert text == html
    assert encode_html(text, found) == data


def test_commented_out_declaration_is_ignored() -> None:
    data = page('<!-- <meta charset="koi8-r"> -->').encode("utf-8")
    assert decode_html_bytes(data)[1] == "utf-8"


def test_transport_charset_outranks_the_document() -> None:
    html = page('<meta charset="utf-8">', "P\u0159\u00edli\u0161")
    data = html.encode("iso-8859-2")
    assert decode_html_bytes(data, transport_charset="ISO-8859-2") == (html, "iso8859-2")


def test_unknown_or_unsafe_labels_fall_back() -> None:
    for meta in ('<meta charset="x-nonsense">', '<meta charset="utf-7">'):
        data = page(meta).encode("utf-8")
        assert decode_html_bytes(data)[1] == "utf-8"
    # A label for an encoding that is not ASCII-based cannot describe ASCII markup.
    data = page('<meta charset="utf-16">').encode("utf-8")
    assert decode_html_bytes(data)[1] == "utf-8"


def test_undeclared_legacy_text_is_read_as_windows_1252() -> None:
    data = page().encode("cp1252")
    assert decode_html_bytes(data) == (page(), "cp1252")


def test_utf8_with_a_damaged_byte_is_still_utf8() -> None:
    data = (page() * 3).encode("utf-8").replace(b"\xc3\xa9", b"\xc3e", 1)  # one broken
    text, found = decode_html_bytes(data)
    assert found == "utf-8"
    assert "\u00fcber" in text
    assert encode_html(text, found) == data


def test_a_declaration_that_would_not_round_trip_is_passed_over() -> None:
    # Declared UTF-16 inside the document cannot be right; bytes invalid for the declared
    # charset are kept through surrogate escapes instead of being replaced.
    data = b'<meta charset="shift_jis"><p>\x81\x7f\xff</p>'
    text, found = decode_html_bytes(data)
    assert encode_html(text, found) == data


def test_inserted_ascii_survives_any_chosen_charset() -> None:
    for data in (
        page('<meta charset="gb2312">', "\u4e2d\u6587").encode("gbk"),
        page('<meta charset="iso-2022-jp">', "\u65e5\u672c\u8a9e").encode("iso-2022-jp"),
        b"\xff\xfe" + page().encode("utf-16-le"),
    ):
        text, found = decode_html_bytes(data)
        at = text.index("</body>")
        inserted = text[:at] + '<img src="https://t.example.com/t/o/x.gif">' + text[at:]
        again, _ = decode_html_bytes(encode_html(inserted, found))
        assert again == inserted


@given(st.binary(max_size=300))
def test_every_byte_string_round_trips(data: bytes) -> None:
    text, encoding = decode_html_bytes(data)
    assert encode_html(text, encoding) == data


@given(
    st.sampled_from(["utf-8", "cp1252", "koi8-r", "gbk", "shift_jis", "iso-8859-7"]),
    st.binary(max_size=200),
)
def test_declared_but_wrong_charsets_still_round_trip(label: str, body: bytes) -> None:
    data = f'<meta charset="{label}">'.encode("ascii") + body
    text, encoding = decode_html_bytes(data)
    assert encode_html(text, encoding) == data
