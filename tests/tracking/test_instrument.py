"""Instrumenting a copy: links sealed, one pixel, every other character left as written."""

from __future__ import annotations

import base64
import random
import re

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mailbeacon.tracking import instrument as instrument_module
from mailbeacon.tracking.instrument import (
    MAX_TRACKED_LINKS,
    Instrumented,
    TrackedLink,
    _has_placeholder,
    _is_trackable_url_exact,
    click_url,
    find_links,
    instrument,
    is_empty_body,
    is_trackable_url,
    open_url,
    pixel_html,
)
from mailbeacon.tracking.tokens import MAX_PLAIN_CLICK_URL_BYTES, TokenCodec
from tests.tracking.test_corpus import (
    BASE,
    CODEC,
    assert_positions_consistent,
    assert_same_tree,
    expected_with_pixel,
    pixel_for,
    restore_text,
)

COPY = 42


def run(html: str | None = None, text: str | None = None, **options: object) -> Instrumented:
    kwargs: dict[str, object] = {"copy_id": COPY, "codec": CODEC, "base_url": BASE}
    kwargs.update(options)
    return instrument(html=html, text=text, **kwargs)  # type: ignore[arg-type]


def targets(rewritten: str) -> list[tuple[int, str]]:
    """(position, url) of every click URL in a body, in order."""
    found = re.findall(r"https://t\.example\.com/t/c/([A-Za-z0-9_-]+)", rewritten)
    return [(t.position, t.url) for t in map(CODEC.read_click_token, found)]


def test_urls_of_the_edge() -> None:
    assert click_url("https://t.x", "TOK") == "https://t.x/t/c/TOK"
    assert open_url("https://t.x/", "TOK") == "https://t.x/t/o/TOK.gif"


def test_links_are_sealed_and_the_pixel_added() -> None:
    html = '<html><body><p>Hi <a href="https://shop.example/sale?id=1">sale</a></p></body></html>'
    result = run(html)
    assert result.html is not None
    assert targets(result.html) == [(0, "https://shop.example/sale?id=1")]
    assert result.links == [TrackedLink(0, "https://shop.example/sale?id=1", "sale")]
    assert result.html.endswith(pixel_for(COPY) + "</body></html>")
    assert (result.open_tracked, result.links_tracked, result.empty_body) == (True, True, False)


def test_same_destination_gets_same_position_and_token_everywhere() -> None:
    html = (
        '<!--[if mso]><v:roundrect href="https://x.com/buy?a=1&amp;b=2" arcsize="10%">'
        "<center>Buy now</center></v:roundrect><![endif]-->"
        '<a href="https://x.com/other">other</a>'
        '<a href="https://x.com/buy?a=1&#38;b=2" style="mso-hide:all">Buy now</a>'
    )
    text = "Buy: https://x.com/buy?a=1&b=2\nNew: https://x.com/new"
    result = run(html, text)
    assert result.html is not None
    assert result.text is not None
    vml, other, twin = targets(result.html)
    assert vml == twin == (0, "https://x.com/buy?a=1&b=2")
    assert other == (1, "https://x.com/other")
    assert targets(result.text) == [(0, "https://x.com/buy?a=1&b=2"), (2, "https://x.com/new")]
    tokens = re.findall(r"/t/c/([\w-]+)", result.html + result.text)
    assert tokens[0] == tokens[2] == tokens[3]
    assert [link.position for link in result.links] == [0, 1, 2]
    assert result.links[0].text == "Buy now"


def test_positions_and_tokens_are_deterministic_per_body() -> None:
    html = '<a href="https://a.com/">a</a><a href="https://b.com/">b</a>'
    first, second = run(html), run(html)
    assert first.html == second.html
    other_copy = run(html, copy_id=COPY + 1)
    assert [link.position for link in other_copy.links] == [0, 1]
    assert other_copy.html != first.html
    assert find_links(html, None) == first.links


@pytest.mark.parametrize(
    ("tag", "expected_quote"),
    [
        ('<a href="https://x.com/?a=1&amp;b=2">', '"'),
        ("<a href='https://x.com/?a=1&amp;b=2'>", "'"),
        ("<a href=https://x.com/?a=1&amp;b=2>", '"'),
    ],
)
def test_new_value_is_escaped_for_its_quoting(tag: str, expected_quote: str) -> None:
    base = 'https://t.example.com/it\'s?x=1&y="2"'
    result = run(tag + "x</a>", base_url=base)
    assert result.html is not None
    m = re.match(r"<a href=(.)(.*?)\1>", result.html)
    assert m is not None
    assert m.group(1) == expected_quote
    assert "&amp;" in m.group(2)
    assert '"' not in m.group(2)
    assert "'" not in m.group(2)
    assert result.links[0].url == "https://x.com/?a=1&b=2"


def test_only_the_value_span_changes() -> None:
    html = '<!DOCTYPE html>\r\n<A  HREF = "https://x.com/"\nTARGET=_blank>X</A>\r\n'
    result = run(html, open_tracking=False)
    assert result.html is not None
    prefix, suffix = '<!DOCTYPE html>\r\n<A  HREF = "', '"\nTARGET=_blank>X</A>\r\n'
    assert result.html.startswith(prefix)
    assert result.html.endswith(suffix)
    assert restore_text(html, result.html, COPY)


@pytest.mark.parametrize(
    "href",
    [
        "mailto:sales@x.com",
        "tel:+4412345",
        "#section",
        "",
        "sms:123",
        "javascript:void(0)",
        "{{unsubscribe_url}}",
        "https://x.com/?u={{ user.id }}",
        "{% url 'home' %}",
        "*|UNSUB|*",
        "http://*|DOMAIN|*/p",
        "%%view_email_url%%",
        "https://x.com/%%=v(@id)=%%",
        "[[UNSUBSCRIBE]]",
        "https://x.com/$contact.id$",
        "https://x.com/${id}",
        "<%= url %>",
        "http://",
        "https://",
        "https:///path",
        "https://user@/path",
    ],
)
def test_placeholders_and_other_schemes_are_left_alone(href: str) -> None:
    html = f'<p>Hi</p><a href="{href}">x</a>'
    result = run(html, open_tracking=False)
    assert result.html == html
    assert result.links == []
    assert not result.links_tracked


def test_scheme_check_ignores_case_and_leading_space() -> None:
    result = run('<a href="  HTTPS://X.com/Path">x</a><a href="\tHttp://y.com">y</a>')
    assert [link.url for link in result.links] == ["HTTPS://X.com/Path", "Http://y.com"]


def test_opt_out_marker_is_removed_and_nothing_else_changes() -> None:
    html = (
        '<a href="https://x.com/keep" data-mb-notrack class="b">k</a>'
        '<a data-mb-notrack="" href="https://x.com/keep2">k</a>'
        '<a href="https://x.com/track">t</a>'
    )
    result = run(html, open_tracking=False)
    assert result.html is not None
    assert result.html.startswith(
        '<a href="https://x.com/keep" class="b">k</a><a href="https://x.com/keep2">k</a><a href="'
    )
    assert [link.url for link in result.links] == ["https://x.com/track"]
    # The marker is an instruction to us: it goes even when links are not tracked.
    untracked = run(html, open_tracking=False, link_tracking=False)
    assert untracked.html is not None
    assert "data-mb-notrack" not in untracked.html
    assert "https://x.com/track" in untracked.html


def test_marked_destination_is_still_tracked_where_unmarked() -> None:
    html = '<a href="https://x.com/" data-mb-notrack>a</a><a href="https://x.com/">b</a>'
    result = run(html, open_tracking=False)
    assert result.html is not None
    assert result.html.startswith('<a href="https://x.com/">a</a><a href="https://t.example')
    assert result.links == [TrackedLink(0, "https://x.com/", "b")]


def test_script_style_textarea_title_and_comments_are_not_touched() -> None:
    inner = '<a href="https://x.com/">x</a>'
    html = (
        f"<title>{inner}</title><style>/* {inner} */</style><script>'{inner}'</script>"
        f"<textarea>{inner}</textarea><!-- {inner} --><p>visible</p>"
    )
    result = run(html, open_tracking=False)
    assert result.html == html
    assert result.links == []


def test_pixel_goes_before_the_last_body_end_tag() -> None:
    html = "<html><body><p>a</p><!-- </body> --></body>\n<p>late</p></BODY></html>"
    result = run(html)
    assert result.html == html.replace("</BODY>", pixel_for(COPY) + "</BODY>")


def test_pixel_goes_at_the_end_without_a_body_tag() -> None:
    result = run("<div>Sent from my phone</div>\n")
    assert result.html == "<div>Sent from my phone</div>\n" + pixel_for(COPY)


def test_pixel_stays_out_of_an_unterminated_comment() -> None:
    html = "<p>hello</p><!-- signature"
    result = run(html)
    assert result.html == "<p>hello</p>" + pixel_for(COPY) + "<!-- signature"


def test_pixel_takes_no_room() -> None:
    pixel = pixel_html("https://t.x/t/o/T.gif")
    assert 'alt=""' in pixel
    assert 'width="1"' in pixel
    assert 'height="1"' in pixel
    style = re.search(r'style="([^"]*)"', pixel)
    assert style is not None
    for rule in ("display:block", "border:0", "margin:0", "padding:0", "height:1px"):
        assert rule in style.group(1)


def test_plain_text_links_are_rewritten_without_a_pixel() -> None:
    text = "See (https://x.com/a_(b)). Or <https://y.com/p?q=1>, or https://z.com/!"
    result = run(None, text)
    assert result.text is not None
    assert targets(result.text) == [
        (0, "https://x.com/a_(b)"),
        (1, "https://y.com/p?q=1"),
        (2, "https://z.com/"),
    ]
    assert re.fullmatch(r"See \(\S+\)\. Or <\S+>, or \S+!", result.text)
    assert result.html is None
    assert not result.open_tracked
    assert result.links_tracked


@pytest.mark.parametrize(
    ("html", "text"),
    [
        (None, None),
        ("", ""),
        ("<html><head><title>Hi</title><style>p{}</style></head><body>\n</body></html>", None),
        ("<p>&nbsp;</p><p> &#160; </p><br>", " \n\t"),
        ("<!-- only a comment --><script>x()</script>", None),
    ],
)
def test_empty_bodies_are_not_tracked_at_all(html: str | None, text: str | None) -> None:
    assert is_empty_body(html, text)
    result = run(html, text)
    assert result == Instrumented(html, text, [], False, False, True)
    assert find_links(html, text) == []


@pytest.mark.parametrize(
    ("html", "text"),
    [("<p><img src='cid:logo'></p>", None), (None, "hi"), ("<p>\u00a0x</p>", "")],
)
def test_an_image_or_any_text_is_content(html: str | None, text: str | None) -> None:
    assert not is_empty_body(html, text)
    assert not run(html, text).empty_body


def test_already_tracked_links_and_pixel_are_not_added_twice() -> None:
    html = '<p><a href="https://x.com/">x</a> and <a href="https://y.com/">y</a></p></body>'
    text = "https://x.com/ and https://z.com/"
    first = run(html, text)
    second = run(first.html, first.text)
    assert (second.html, second.text) == (first.html, first.text)
    assert second.links == []
    assert not second.open_tracked
    assert not second.links_tracked
    # A click URL minted elsewhere (another copy, another edge) is not wrapped either.
    foreign = '<a href="https://edge.other.org/t/c/' + "A" * 40 + '">old</a>'
    assert run(foreign, open_tracking=False).html == foreign


def test_switches() -> None:
    html = '<a href="https://x.com/">x</a></body>'
    no_pixel = run(html, open_tracking=False)
    assert no_pixel.html is not None
    assert "/t/o/" not in no_pixel.html
    assert no_pixel.links
    no_links = run(html, "https://y.com/", link_tracking=False)
    assert no_links.links == []
    assert not no_links.links_tracked
    assert no_links.open_tracked
    assert no_links.text == "https://y.com/"
    assert no_links.html == html.replace("</body>", pixel_for(COPY) + "</body>")


def test_find_links_matches_instrument_positions() -> None:
    html = (
        '<a href="https://b.com/">B</a><a href="mailto:x@y.z">m</a><a href="https://a.com/">A</a>'
    )
    text = "https://c.com/ https://b.com/"
    planned = find_links(html, text)
    assert planned == run(html, text).links
    assert [(link.position, link.url, link.text) for link in planned] == [
        (0, "https://b.com/", "B"),
        (1, "https://a.com/", "A"),
        (2, "https://c.com/", ""),
    ]


def test_returned_links_are_the_callers_own() -> None:
    html = '<a href="https://x.com/">x</a>'
    run(html).links.clear()
    assert run(html).links == [TrackedLink(0, "https://x.com/", "x")]


# Property tests: generated documents mixing well-formed and broken markup.

_WEB = [
    "https://x.com/a",
    "HTTP://Y.com/b?c=1&amp;d=2",
    " https://z.com/&#99;",
    "&#104;ttps://e.com/",
    "https://x.com/a",
    "http://",
    "https://q.com/{{id}}",
]
_OTHER = ["mailto:a@b.c", "#", "", "*|UNSUB|*", "tel:1", "/rel"]
_URL = st.sampled_from(_WEB + _OTHER)
_TEXT = st.text(alphabet="ab <>&;#\"'=/-\n\u00a0", max_size=8)


@st.composite
def _attribute(draw: st.DrawFn, name: str | None = None) -> str:
    attr = name or draw(st.sampled_from(["href", "HREF", "class", "title", "style", "alt", "x"]))
    value = draw(_URL) if attr.lower() == "href" else draw(_TEXT)
    double = value.replace('"', "&quot;")
    single = value.replace("'", "&#39;")
    bare = re.sub(r"[\s>\"']", "", value) or "v"
    return draw(
        st.sampled_from(
            [
                f' {attr}="{double}"',
                f" {attr}='{single}'",
                f" {attr}={bare}",
                f' {attr} = "{double}"',
                f" {attr}=",
                f" {attr}",
            ]
        )
    )


@st.composite
def _tag(draw: st.DrawFn, markers: bool = False) -> str:
    name = draw(st.sampled_from(["a", "A", "area", "p", "div", "td", "img", "b", "v:roundrect"]))
    attrs = draw(st.lists(_attribute(), max_size=3))
    if name.lower() in ("a", "area", "v:roundrect") and draw(st.booleans()):
        attrs.insert(0, draw(_attribute("href")))
    if markers and draw(st.booleans()):
        marker = draw(
            st.sampled_from([" data-mb-notrack", " DATA-MB-NOTRACK", ' data-mb-notrack=""'])
        )
        attrs.insert(draw(st.integers(0, len(attrs))), marker)
    close = draw(st.sampled_from([">", "/>", " >"]))
    return f"<{name}{''.join(attrs)}{close}"


_RAW = st.sampled_from(["script", "style", "title", "textarea", "xmp"]).flatmap(
    lambda name: st.builds(
        lambda inner: f"<{name}>{inner}</{name}>",
        st.sampled_from(['<a href="https://in.raw/">', "</scrip", "a<b", "</style x", ""]),
    )
)
_FRAGMENT = st.one_of(
    _TEXT,
    _tag(),
    _RAW,
    st.sampled_from(
        [
            "</a>",
            "</p>",
            "</td>",
            "<br>",
            "</body>",
            "<body>",
            "<!-- c -->",
            '<!-- <a href="https://in.comment/"> -->',
            "<!-->",
            "<!--->",
            '<!--[if mso]><v:rect href="https://x.com/a"><![endif]-->',
            '<!--[if mso]><a href="https://mso.only/">m</a><![endif]-->',
            "<!--[if !mso]><!-->",
            "<!--<![endif]-->",
            "<!DOCTYPE html>",
            "<?xml x?>",
            "</ x>",
            "&amp;",
            "&nbsp;",
            "<",
            "< p",
            "<img src=x>",
        ]
    ),
)
_TRAILER = st.sampled_from(["", "", "", "<!-- open", "<a href='https://x.com/", "<style>x", "<"])
_MARKED_DOCUMENT = st.lists(st.one_of(_TEXT, _tag(markers=True)), max_size=20).map("".join)
_DOCUMENT = st.builds(
    lambda parts, tail: "".join(parts) + tail, st.lists(_FRAGMENT, max_size=25), _TRAILER
)
_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(_DOCUMENT)
def test_generated_html_changes_only_links_and_pixel(document: str) -> None:
    result = run(document)
    assert result.html is not None
    if result.empty_body:
        assert result.html == document
        return
    if result.open_tracked:
        _, found = expected_with_pixel(document, result.html, COPY)
    else:
        found = restore_text(document, result.html, COPY)
    assert_positions_consistent(found)
    assert {(t.position, t.url) for t in found} == {
        (link.position, link.url) for link in result.links
    }
    # Instrumenting the output again changes nothing.
    assert run(result.html).html == result.html


@_SETTINGS
@given(_DOCUMENT)
def test_generated_html_agrees_with_an_html5_parser(document: str) -> None:
    result = run(document)
    assert result.html is not None
    expected = document
    if result.open_tracked:
        expected, _ = expected_with_pixel(document, result.html, COPY)
    assert_same_tree(expected, result.html, COPY, links=not result.empty_body)


@_SETTINGS
@given(_MARKED_DOCUMENT)
def test_generated_opt_out_markers_are_removed_and_their_links_kept(document: str) -> None:
    result = run(document, open_tracking=False)
    assert result.html is not None
    if result.empty_body:
        assert result.html == document
        return
    assert_same_tree(document, result.html, COPY)
    assert run(result.html, open_tracking=False, link_tracking=False).html == result.html


_TEXT_PIECES = st.sampled_from(
    ["https://x.com/a", "http://y.org/(p)", "HTTPS://Z.NET", "(", ")", "<", ">", ".", ",", "!",
     " ", "\n", "word", "\u00e9", "https://x.com/a", "www.x.com", "http://"]
)  # fmt: skip


@given(st.lists(_TEXT_PIECES, max_size=20).map("".join))
def test_generated_text_changes_only_addresses(text: str) -> None:
    result = run(None, text)
    if result.empty_body:
        assert result.text == text
        return
    assert result.text is not None
    parts = re.split(r"https://t\.example\.com/t/c/([A-Za-z0-9_-]+)", result.text)
    restored = "".join(
        CODEC.read_click_token(part).url if i % 2 else part for i, part in enumerate(parts)
    )
    assert restored == text
    assert run(None, result.text).text == result.text


def test_property_helpers_catch_a_changed_byte() -> None:
    html = '<p class="a"><a href="https://x.com/">x</a></p>'
    result = run(html, open_tracking=False)
    assert result.html is not None
    with pytest.raises(AssertionError):
        restore_text(html, result.html.replace('class="a"', 'class="b"'), COPY)
    with pytest.raises(AssertionError):
        assert_same_tree(html, result.html.replace("x</a>", "y</a>"), COPY)
    other = TokenCodec([(7, bytes(range(64)))]).mint_click_token(COPY + 1, 0, "https://x.com/")
    with pytest.raises(AssertionError):
        restore_text(html, html.replace("https://x.com/", click_url(BASE, other)), COPY)


# The placeholder rule as a lazy regex, as it was first written: quadratic on "{{{{...",
# but a plain statement of which URLs hold a placeholder.
_PLACEHOLDER_AS_WRITTEN = re.compile(
    r"""\{\{.*?\}\}|\{%.*?%\}|\{!.*?\}|\{\$.*?\}|\*\|.*?\|\*|%%.*?%%|\[\[.*?\]\]
      |\$\{.*?\}|\$[A-Za-z_][\w.:\-]*\$|<%.*?%>""",
    re.DOTALL | re.VERBOSE,
)


@given(st.text(alphabet="{}%!$*|[]<>_ab.", max_size=16))
def test_placeholder_search_agrees_with_the_lazy_regex(tail: str) -> None:
    url = "https://x.com/" + tail
    assert _has_placeholder(url) == (_PLACEHOLDER_AS_WRITTEN.search(url) is not None)
    if _has_placeholder(url):
        assert not is_trackable_url(url)


# Destinations near the fast path's shape: hosts with Punycode, numeric or hex last labels,
# empty labels, ports, userinfo and non-ASCII; paths with placeholders, stray "%", controls,
# spaces, backslashes and click paths. Each is judged by `is_trackable_url` (fast path
# first) and by the exact checks alone.
_LABEL = st.one_of(
    st.text(alphabet="ab0x9-_nXN", max_size=6),
    st.sampled_from(["xn--bcher-kva", "XN--a", "xn--", "0x7f", "1", "09", "\u00fc", "%41"]),
    st.sampled_from(["example", "com", "Mail-1"]),
)
_HOST = st.lists(_LABEL, min_size=1, max_size=4).map(".".join)
_PATH = st.lists(
    st.one_of(
        st.sampled_from(
            ["/", "?", "#", "a", "F9", "%", "%%", "%41", "%4", "{{", "}}", "{%", "%}", "{!", "}",
             "{$", "${", "$", "*|", "|*", "[[", "]]", "<%", "%>", "\\", " ", "\t", "\x7f",
             "\u00e9", "\ud800", "/t/c/", "A" * 32, "@", ":"]
        ),
        st.sampled_from(  # whole placeholders
            ["%%a%%", "{{a}}", "{%a%}", "{!a}", "{$a}", "${a}", "$a$", "*|A|*", "[[a]]", "<%a%>"]
        ),
        st.text(alphabet="/?#%aF9{}[]$*|<>&=:@!\\ \t\x7f\u00e9.-_'\"", max_size=4),
    ),
    max_size=8,
).map("".join)  # fmt: skip
# Base64 of random bytes: deflate gains only a quarter on it.
_NOISE = base64.urlsafe_b64encode(random.Random(0).randbytes(7000)).decode()
_SCHEME = st.sampled_from(["https://", "http://", "HTTPS://", "hTtP://", "https:/", "ftp://", ""])
_AFTER_HOST = st.sampled_from(["/", "/", "?", "#", "", "\\"])
_NEAR_PLAIN_URL = st.one_of(
    st.builds(  # odd in the authority
        lambda scheme, user, host, port, path: f"{scheme}{user}{host}{port}{path}",
        _SCHEME,
        st.sampled_from(["", "", "", "u@", "u:p@", "@"]),
        _HOST,
        st.sampled_from(["", "", "", ":", ":443", ":99999", ":x"]),
        st.sampled_from(["", "/", "/a?b=c", "\\x", "#f"]),
    ),
    st.builds(  # odd after a plain authority
        lambda start, path: f"https://mail.example.com{start}{path}", _AFTER_HOST, _PATH
    ),
    st.builds(  # odd anywhere
        lambda scheme, host, start, path: f"{scheme}{host}{start}{path}",
        _SCHEME,
        _HOST,
        _AFTER_HOST,
        _PATH,
    ),
)


@settings(max_examples=1500, deadline=None)
@given(_NEAR_PLAIN_URL)
@example("https://mail.example.com/%%id%%")
@example("https://mail.example.com/$id$")
@example("https://mail.example.com/a/t/c/" + "A" * 32)
@example("https://mail.example.com/a\x7f")
@example("https://mail.09/")
@example("https://mail.example.com/t\\c\\" + "A" * 32)
@example("https://mail.example.com/t/x/../c/" + "A" * 32)
@example("https://mail.example.com/a/../b")
@example("https://u@mail.example.com/")
@example("https://mail.example.com/" + "a" * MAX_PLAIN_CLICK_URL_BYTES)
@example("https://x.com/" + _NOISE[:6103])  # just too long to fit as written
@example("https://x.com/" + _NOISE)  # too long to fit even deflated
def test_trackable_fast_path_agrees_with_the_exact_checks(url: str) -> None:
    base = "https://t.example.com"
    assert is_trackable_url(url, base) == _is_trackable_url_exact(url, base)
    assert is_trackable_url(url) == _is_trackable_url_exact(url, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://www.example.com/",
        "HTTP://Mail.Example.co.uk/a/b?utm_source=x&utm_medium=y#top",
        "https://example.com/a%20b?q=%C3%BC",
        "https://a-b.example/!\"'()+,;=@^_`|}~]\\x",
    ],
)
def test_common_destinations_take_the_fast_path(url: str) -> None:
    # Otherwise the agreement above would hold vacuously.
    assert instrument_module._PLAIN_WEB_URL.fullmatch(url) is not None
    assert is_trackable_url(url) and _is_trackable_url_exact(url, None)


@pytest.mark.parametrize(
    "url",
    [
        "https://x.com/t/c/" + "A" * 32,
        "https://t.example.com/t/c/short",
        "https://x.0x7f/",
        "https://1.2.3.999/",
        "https://x.com/%%id%%",
        "https://x.com/{{id}}",
        "https://x.com:99999/",
        "https://x.com/a\x01",
        # Click URLs of ours in a form the browser rewrites to /t/c/<token>.
        "https://x.com/t\\c\\" + "A" * 32,
        "https://x.com/t/x/../c/" + "A" * 32,
        "https://x.com/t/x/%2e%2E/c/" + "A" * 32,
        "https://x.com/t/./c/" + "A" * 32,
    ],
)
def test_near_misses_of_the_fast_path_stay_untracked(url: str) -> None:
    assert not is_trackable_url(url, "https://t.example.com")


def test_destinations_past_the_limit_stay_as_written_and_are_counted() -> None:
    html = "".join(f'<a href="https://x.com/{i}">{i}</a>' for i in range(MAX_TRACKED_LINKS + 7))
    text = "see https://y.com/ and https://x.com/3"
    result = run(html, text, open_tracking=False)
    assert len(result.links) == MAX_TRACKED_LINKS
    assert result.links_over_limit == 8  # seven in the HTML, one in the text
    assert find_links(html, text) == result.links
    assert result.html is not None and result.text is not None
    assert result.html.endswith(
        "".join(
            f'<a href="https://x.com/{i}">{i}</a>'
            for i in range(MAX_TRACKED_LINKS, MAX_TRACKED_LINKS + 7)
        )
    )
    assert result.text.startswith("see https://y.com/ and https://t.example.com/t/c/")
    assert run(html, text, link_tracking=False).links_over_limit == 0
