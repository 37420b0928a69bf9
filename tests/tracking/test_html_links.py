"""The HTML scanner: which hrefs it reports, and where, against the HTML tokenizer's rules."""

from __future__ import annotations

from pathlib import Path

import html5lib
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.tracking import html_links
from mailbeacon.tracking.charset import decode_html_bytes
from mailbeacon.tracking.html_links import (
    MAX_LINK_SITES,
    LinkSite,
    anchor_text,
    decode_attribute,
    normalise_url,
    scan_html,
)


def urls(document: str) -> list[str]:
    return [site.url for site in scan_html(document).links]


def value_of(document: str, site: LinkSite) -> str:
    return document[site.start : site.end]


@pytest.mark.parametrize(
    ("document", "value", "quote"),
    [
        ('<a href="https://x.com/d">', '"https://x.com/d"', '"'),
        ("<a href='https://x.com/s'>", "'https://x.com/s'", "'"),
        ("<a href=https://x.com/u>", "https://x.com/u", ""),
        ("<a href = 'https://x.com/sp' >", "'https://x.com/sp'", "'"),
        ('<A HREF="https://x.com/upper">', '"https://x.com/upper"', '"'),
        ('<a\nclass="c"\thref="https://x.com/nl"/>', '"https://x.com/nl"', '"'),
        ('<area shape=rect href="https://x.com/area">', '"https://x.com/area"', '"'),
    ],
)
def test_reports_the_value_span_in_every_quoting_style(
    document: str, value: str, quote: str
) -> None:
    (site,) = scan_html(document).links
    assert value_of(document, site) == value
    assert site.quote == quote
    assert site.url == value.strip("'\"")


@pytest.mark.parametrize(
    "href",
    ["mailto:a@b.c", "tel:+123", "#top", "", "/relative", "ftp://x.com/", "javascript:x()"],
)
def test_other_schemes_are_not_web_links(href: str) -> None:
    assert urls(f'<a href="{href}">x</a>') == []


@pytest.mark.parametrize(
    ("href", "url"),
    [
        ("https://x.com/?a=1&amp;b=2", "https://x.com/?a=1&b=2"),
        ("https://x.com/?a=1&#38;b=2&#x26;c=3", "https://x.com/?a=1&b=2&c=3"),
        ("&#104;ttps://x.com/", "https://x.com/"),
        # In attributes a legacy reference running into "=" or a letter stays literal.
        ("https://x.com/?a=1&copy=2&notit=3", "https://x.com/?a=1&copy=2&notit=3"),
        ("https://x.com/?q=&copy;", "https://x.com/?q=\xa9"),
        ("  HTTPS://X.com/a\n b  ", "HTTPS://X.com/a b"),
        ("\x01\thttp://x.com/", "http://x.com/"),
    ],
)
def test_values_are_decoded_as_a_browser_reads_them(href: str, url: str) -> None:
    assert urls(f'<a href="{href}">x</a>') == [url]


@given(st.text(alphabet="&#;=ampcoyx0123456789ABCDEFabcdef.?/", max_size=30))
def test_attribute_decoding_matches_html5lib(value: str) -> None:
    escaped = value.replace('"', "&quot;")
    tree = html5lib.parse(f'<a href="{escaped}">x</a>', namespaceHTMLElements=False)
    assert decode_attribute(escaped) == tree.find(".//a").get("href")


@given(
    st.lists(
        st.sampled_from(["&amp;", "&amp", "&AMP;", "&", ";", "=", "a", "x1", "&copy", "&#38;"]),
        max_size=12,
    ).map("".join)
)
def test_ampersand_references_decode_as_html5lib_reads_them(value: str) -> None:
    # "&amp;" alone takes a shortcut; it must agree with the reference-by-reference path.
    tree = html5lib.parse(f'<a href="{value}">x</a>', namespaceHTMLElements=False)
    assert decode_attribute(value) == tree.find(".//a").get("href")


def test_first_of_duplicate_hrefs_wins() -> None:
    assert urls('<a href="https://x.com/1" href="https://x.com/2">') == ["https://x.com/1"]
    assert urls('<a href href="https://x.com/2">') == []
    assert urls('<a hreflang=en href="https://x.com/3">') == ["https://x.com/3"]


def test_href_inside_another_attribute_value_is_not_a_link() -> None:
    document = '<a title="href=https://no.com/ <a href=https://no.com/>" href="https://yes.com/">'
    assert urls(document) == ["https://yes.com/"]
    assert urls('<img alt="<a href=https://no.com/>"><p>') == []
    # A quoted ">" does not end the tag either.
    assert urls('<div title="a > b <a href=https://no.com/>"></div>') == []


@pytest.mark.parametrize("element", ["script", "style", "textarea", "title", "xmp", "iframe"])
def test_raw_text_elements_hold_no_links(element: str) -> None:
    document = (
        f'<{element} type="x"><a href="https://no.com/"></{element}x>'
        f'<a href="https://no2.com/"></{element.upper()} >'
        '<a href="https://yes.com/">'
    )
    assert urls(document) == ["https://yes.com/"]


def test_ordinary_comments_hold_no_links_but_conditional_ones_do() -> None:
    document = (
        '<!-- <a href="https://no.com/"> -->'
        '<!--[if mso]><a href="https://mso.com/">x</a><![endif]-->'
        '<!--[if !mso]><!--><a href="https://yes.com/">y</a><!--<![endif]-->'
        "<!--> <a href=https://after-empty-comment.com/>"
        '<!-- a --!> <a href="https://after-bang.com/">'
        '<!--[if mso]><table><tr><td><AREA href="https://mso-area.com/"><![endif]-->'
        '<!--[if mso]><td><abbr>-</abbr><![endif]--><a href="https://after-plain-cc.com/">'
    )
    assert urls(document) == [
        "https://mso.com/",
        "https://yes.com/",
        "https://after-empty-comment.com/",
        "https://after-bang.com/",
        "https://mso-area.com/",
        "https://after-plain-cc.com/",
    ]


def test_vml_shapes_with_href_are_links() -> None:
    document = (
        '<!--[if mso]><v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" '
        'href="https://x.com/b" style="height:40px"><v:fill type="tile" src="i.png" />'
        "<center>Buy</center></v:roundrect><V:RECT HREF='https://x.com/r'><![endif]-->"
    )
    sites = scan_html(document).links
    assert [(s.tag, s.url) for s in sites] == [
        ("v:roundrect", "https://x.com/b"),
        ("v:rect", "https://x.com/r"),
    ]
    assert anchor_text(document, sites[0]) == "Buy"


def test_opt_out_marker_spans_cover_the_attribute_and_its_space() -> None:
    document = (
        '<a href="https://x.com/" data-mb-notrack class="c">x</a><a DATA-MB-NOTRACK=1 href=#>'
    )
    scan = scan_html(document)
    assert [site.notrack for site in scan.links] == [True]
    assert [document[a:b] for a, b in scan.markers] == [" data-mb-notrack", " DATA-MB-NOTRACK=1"]
    # Before "/" the space stays: `<a href=x/>` would read the slash into the value.
    slash = "<a href=https://x.com/ data-mb-notrack/>"
    ((a, b),) = scan_html(slash).markers
    assert slash[:a] + slash[b:] == "<a href=https://x.com/ />"


def test_pixel_offset_is_before_the_last_body_end_tag_outside_comments() -> None:
    document = "<body><p>x</p></body><!-- </body> --></BODY ></html>"
    assert scan_html(document).pixel_offset == document.index("</BODY")
    assert scan_html("<p>x</p>").pixel_offset == len("<p>x</p>")


@pytest.mark.parametrize(
    ("document", "dangling"),
    [
        ("<p>x</p><!-- never closed", "<!--"),
        ("<p>x</p><style>p {}", "<style>"),
        ("<p>x</p><img src='a.png", "<img"),
        ("<p>x</p><a href=https://x.com/", "<a"),
        ("<p>x</p><plaintext><a href=https://x.com/>", "<plaintext>"),
    ],
)
def test_pixel_offset_stays_out_of_constructs_running_to_the_end(
    document: str, dangling: str
) -> None:
    scan = scan_html(document)
    assert scan.pixel_offset == document.index(dangling)
    assert scan.links == []


@pytest.mark.parametrize(
    ("document", "visible"),
    [
        ("", False),
        ("<html><head><title>Subject</title><style>p{}</style></head><body> </body></html>", False),
        ("<p>&nbsp;&#160;&zwnj;\u200b\u00a0</p><br><!-- hidden text -->", False),
        ("<script>document.write('x')</script>", False),
        ("<!--[if mso]>Outlook only<![endif]-->", False),
        ("<p>&nbsp;x</p>", True),
        ("<p><img src=cid:logo></p>", True),
        ("<table><tr><td>&amp;</td></tr></table>", True),
        ("a < b", True),
        ("<textarea></textarea>", True),
    ],
)
def test_visibility(document: str, visible: bool) -> None:
    assert scan_html(document).visible is visible
    assert scan_html(document, stop_at_visible=True).visible is visible


def test_anchor_text_is_collapsed_and_falls_back_to_alt_text() -> None:
    document = (
        '<a href="https://x.com/">\n  Read <b>the</b>\n&amp; more </a>'
        '<a href="https://x.com/i"><img alt="Logo &amp; co"></a>'
    )
    first, second = scan_html(document).links
    assert anchor_text(document, first) == "Read the & more"
    assert anchor_text(document, second) == "Logo & co"
    long_text = '<a href="https://x.com/">' + "word " * 100 + "</a>"
    assert len(anchor_text(long_text, scan_html(long_text).links[0])) == 200


def test_normalise_url_follows_the_url_parser() -> None:
    assert normalise_url(" \x00https://x.com/a\tb\nc\r \x1f") == "https://x.com/abc"


@pytest.mark.parametrize(
    ("value", "decoded"),
    [
        ("&#1;", "\x01"),  # kept, as the tokenizer keeps it (html.unescape drops it)
        ("&#x7f;", "\x7f"),
        ("&#xFDD0;", "\ufdd0"),
        ("&#0;", "\ufffd"),
        ("&#128;", "\u20ac"),
        ("&#xD800;", "\ufffd"),
        ("&#x110000;", "\ufffd"),
        ("&#" + "0" * 5000 + "65;", "A"),
        ("&#" + "9" * 5000 + ";", "\ufffd"),
    ],
)
def test_numeric_references_are_decoded_as_the_tokenizer_does(value: str, decoded: str) -> None:
    assert decode_attribute(value) == decoded


def test_link_tags_past_the_limit_are_passed_over_and_the_scan_goes_on() -> None:
    document = '<a href="https://x.com/">x</a>' * (MAX_LINK_SITES + 5)
    document += '<!--[if mso]><v:rect href="https://y.com/"><![endif]--></body><!-- x'
    scan = scan_html(document)
    assert len(scan.links) == MAX_LINK_SITES
    assert scan.body_close == document.index("</body>")
    assert scan.data_end == document.index("<!-- x")


_ATTRIBUTES = st.lists(
    st.sampled_from(
        [' href="https://x.com/"', " HREF=https://y.com/", " href", " href=", " hrefx='z'",
         ' class="a b"', " x=1", "/", " =y", ' a="b"="c"', " h", " data-x='href=\"q\"'",
         "\thref\t=\t'https://t.com/'", ' title="<a href=x>"', " \u212aey=v"]
    ),
    max_size=6,
).map("".join)  # fmt: skip


@given(_ATTRIBUTES)
def test_first_href_is_the_one_html5lib_keeps(attrs: str) -> None:
    document = f"<a{attrs}>x</a>"
    anchor = html5lib.parse(document, namespaceHTMLElements=False).find(".//a")
    expected = anchor.get("href") if anchor is not None else None
    found = scan_html(document).links
    if expected is None or not expected.lower().startswith(("http://", "https://")):
        assert found == []
    else:
        assert [site.url for site in found] == [expected]


# The scanner's fast alternatives (simple tags, comments and link tags read in a few steps,
# style sheets found with str.find) must find exactly what the tokenizer's grammar alone finds.
_EXACT = html_links._Scanners.build(fast=False)
_CORPUS = Path(__file__).parents[3] / "shared" / "corpus" / "html"


def _findings(scan: html_links.HtmlScan) -> tuple[object, ...]:
    return (scan.links, scan.markers, scan.visible, scan.body_close, scan.data_end)


def assert_same_as_exact(document: str) -> None:
    for stop in (False, True):
        fast = html_links._scan(document, stop, html_links._SCANNERS)
        assert _findings(fast) == _findings(html_links._scan(document, stop, _EXACT)), document


@pytest.mark.skipif(not _CORPUS.is_dir(), reason=f"the shared email corpus is not at {_CORPUS}")
def test_fast_scanner_finds_what_the_exact_grammar_finds_in_the_corpus() -> None:
    for path in sorted(_CORPUS.glob("*")):
        assert_same_as_exact(decode_html_bytes(path.read_bytes())[0])


@pytest.mark.parametrize(
    "document",
    [
        # A quote opens a value only right after "=": elsewhere it is part of a name.
        '<td a=b"c d="x> <a href=https://no.com/>y" e="z">',
        '<td a ="x> <a href=https://no.com/>">',
        '<td ="x> <a href=https://yes.com/>">',
        '<td a/="x> <a href=https://yes.com/>">',
        '<td a="1"b="x> <a href=https://no.com/>">',
        '<tdX="a>b" <a href="https://yes.com/">',
        '<px="a>b" <a href="https://yes.com/">',
        '<p/x="a>b"><a href="https://yes.com/">',
        '<br/="a>b"><a href="https://yes.com/">',
        '<p"x="<a href=https://yes.com/>">',
        '<p\tclass="<a href=https://no.com/>">',
        "<div title='<a href=https://no.com/>'><a href=\"https://yes.com/\">",
        '<img alt="a > b <a href=https://no.com/>" src="x"/><a href="https://yes.com/">',
        # Names that only start like special ones, and special ones in other cases.
        '<styles><a href="https://yes.com/"></styles>',
        '<Style><a href="https://no.com/"></style><a href="https://yes.com/">',
        '<titlex><a href="https://yes.com/">',
        '<textarea><a href="https://no.com/"></textarea >',
        '<ab href="https://no.com/"><area href="https://yes.com/">',
        '<a href="https://yes.com/" data-mb-notrack="1">',
        '<a href="https://yes.com/" data-x="1" class="c">',
        '<a href="#" DATA-MB-NOTRACK>',
        '<a href="http://" class="c"><a href="hello">',
        '<a href="https://yes.com/"class="c"><a href=" https://yes2.com/" >',
        '<a href="https://yes.com/" / >',
        # Comments: empty ones, dashes, the "--!>" ending, nested openings, Outlook's.
        "<!--><a href=https://yes.com/>",
        "<!---><a href=https://yes.com/>",
        "<!----><a href=https://yes.com/>",
        '<!-- a - b <a href="https://no.com/"> -- c --><a href="https://yes.com/">',
        '<!-- a --!><a href="https://yes.com/">',
        '<!-- <!-- <a href="https://no.com/"> --><a href="https://yes.com/">',
        '<!--[if mso]><a href="https://mso.com/"><![endif]-->',
        '<!--[if mso]><table><tr><td style="a-b:c"><abbr>x</abbr><![endif]--><a href=https://yes.com/>',
        "<!--[IF mso]><td>a - b<vx>-</td --!><a href=https://yes.com/><!--[if x]><table>--->",
        '<!--[if mso]><V:RECT HREF="https://mso.com/"><![endif]-->',
        '<!--[if mso]><td><AREA href="https://mso.com/"><![endif]-->',
        '<!--[if mso]><td><a\nhref="https://mso.com/"><![endif]-->',
        "<!--[if mso]><table><tr><td> never closed <a href=https://no.com/>",
        "<!--[if mso]><td>x--!><p>shown</p>--><a href=https://yes.com/>",
        # Raw text: false end tags, end tags in other cases, "<" inside, none at all.
        '<style>a<b</stylex><a href="https://no.com/"></STYLE\n><a href="https://yes.com/">',
        '<script>if (a < b) x("</scr" + "ipt>")</script><a href="https://yes.com/">',
        '<style><!-- p { } --></style><a href="https://yes.com/">',
        '<p>x</p><style>p { } <a href="https://no.com/">',
        "<p>x</p><plaintext><a href=https://no.com/>",
        # Cut off inside a tag, a value, a comment.
        '<p>x</p><td class="a',
        '<p>x</p><a href="https://no.com/',
        "<p>x</p><!-- never closed",
        "<p>x</p></body><!-- </body> --></BODY >",
        # VML elements and link tags in the fast shapes, and just outside them.
        '<v:fill type="tile" src="https://x.com/a.gif" color="#fff" /><a href="https://yes.com/">',
        '<v:rect xmlns:v="urn:x" href="https://yes.com/" style="a-b:c;" fill="t">',
        '<v:rect href="#" fill="t"><v:rect href="http://" fill="t"><v:rect href="">',
        '<v:roundrect height="1" href="https://yes.com/"><v:oval hidden="x" href="#">',
        '<v:rect href="https://yes.com/" data-mb-notrack="1"><v:rect dx="1" href="#">',
        '<v:rect data-mb-notrack="1" href="https://yes.com/"><v:fill data-mb-notrack="" src="x">',
        '<a data-mb-notrack="" href="https://yes.com/"><area data-x="1" href="https://yes.com/">',
        '<v:rect href="https://yes.com/" href="https://no.com/"><V:RECT HREF="https://yes.com/">',
        '<v:rect fill="t"  href="https://yes.com/"><v:rect\thref="https://yes.com/">',
        '<v:rect title="<a href=https://no.com/>" href="https://yes.com/">',
        '<area shape="rect" href="https://yes.com/"><a class="c" href="#"><a id="i" href="">',
        '<a class="c" href="https://yes.com/?a=1&amp;b=2"><a class="c" href="https://yes.com/ ">',
        '<a href="https://yes.com/\tb"><a href="https://yes.com/&#x20;"><a href="HTTPS://Y.com/">',
        '<a href="https://yes.com/\x01"><a href="https://yes.com/\n">',
        # Style sheets and scripts just within and just past the length read in one go.
        f"<style>{'p{}' * (html_links.SHORT_RAW_CHARS // 3)}</style><a href=https://yes.com/>",
        f"<style>{'x' * (html_links.SHORT_RAW_CHARS + 1)}</style><a href=https://yes.com/>",
        f"<script>{'x' * html_links.SHORT_RAW_CHARS}<a href=https://no.com/></script>",
        '<style>p{}</style ><script type="x">a</script\t><style>a<b</style><a href=https://yes.com/>',
    ],
)
def test_fast_scanner_agrees_on_adversarial_markup(document: str) -> None:
    assert_same_as_exact(document)
    assert_same_as_exact("<p>x</p>" + document)


_PIECES = st.sampled_from(
    [
        "<td>", "</td>", "<tr>", "<TR>", "<p>", "</p>", "<br/>", "<br />", "<img src=\"x\">",
        '<td class="a" style="b:c">', '<td class="a"style="b">', "<td class='a'>",
        "<td nowrap>", "<td width=1>", '<px="a>b">', '<td/="a>b">', '<td  a="b">', '<td\ta="b">',
        '<td a= "b">',
        '<td a="<a href=https://q.com/>">', '<td a="x>y">', "<td a='x>y'>", '<td ="x>y">',
        '<td a=b"c d="x>', '<p"x="y>z">', "<div<a href=https://r.com/>", "<span title=\"",
        '<a href="https://x.com/">', '<a href="https://x.com/" class="c">',
        '<a href="#" style="s">', '<a href="#" data-mb-notrack="1">', "<a href=https://y.com/>",
        '<a class="c" href="https://z.com/">', '<a href="http://">', '<A HREF="https://u.com/">',
        '<a href="https://x.com/" data-mb-notrack>', '<area href="https://w.com/">',
        "<!-- c -->", "<!--->", "<!-->", "<!-- a - b -->", "<!-- x --!>", "<!--[if mso]>",
        "<![endif]-->", "<!--", "-->", "<style>", "</style>", "<STYLE>", "</style ", "<script>",
        "</script>", "<title>", "</title>", "<textarea>", "</textarea>", "<plaintext>",
        "</body>", "<body>", '<v:rect href="https://v.com/">', "<v:fill/>", "<!DOCTYPE html>",
        '<v:fill type="t" src="x" />', '<v:rect xmlns:v="u" href="https://v.com/" fill="t">',
        '<v:rect href="#" style="s">', '<v:rect href="http://">', '<v:oval hx="1" href="#">',
        '<area shape="r" href="https://w.com/">', '<a class="c" href="#">', "<style>p{}</style>",
        '<a href="https://x.com/?a=1&amp;b=2">', '<a href="https://x.com/ ">', "<script>x</script>",
        "<?xml x?>", "</ x>", "text", " ", "\n", "&nbsp;", "a < b", "<", ">", '"', "'", "=",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_PIECES, max_size=14).map("".join))
def test_fast_scanner_agrees_on_generated_markup(document: str) -> None:
    assert_same_as_exact(document)
