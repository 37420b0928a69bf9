"""Hostile bodies and requests: bounded work, no crash, no link that leads elsewhere.

The timing test is a bound against pathological complexity (quadratic or worse), not a
benchmark: 5,000,000 characters is the body limit, and each shape must be instrumented and
turned into text in under 2 s of CPU time. Linear code does each in well under a second
here; a quadratic path takes minutes.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.kit.text_urls import find_text_urls
from mailbeacon.mail.mime import html_to_text
from mailbeacon.tracking.edge import PIXEL_GIF, TrackingEdge
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.instrument import clear_caches, instrument
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.tokens import TokenCodec

CODEC = TokenCodec([(5, bytes(range(100, 164)))])
BASE = "https://t.example.com"
BODY_LIMIT = 5_000_000
CPU_SECONDS = 2.0


def _fill(unit: str, head: str = "", tail: str = "") -> str:
    room = BODY_LIMIT - len(head) - len(tail)
    return head + (unit * (room // len(unit) + 1))[:room] + tail


SHAPES: dict[str, Callable[[], str]] = {
    "unclosed_attribute": lambda: _fill('<a href="'),
    "unclosed_tags": lambda: _fill("<a "),
    "unclosed_div": lambda: _fill("<div"),
    "unclosed_comments": lambda: _fill("<!--"),
    "unclosed_conditional_comments": lambda: _fill("<!--[if mso]>"),
    "lone_less_than": lambda: _fill("<"),
    "bogus_comments": lambda: _fill("<!"),
    "handlebars_in_a_link": lambda: _fill("{{", '<a href="https://x.com/', '">x</a>'),
    "liquid_in_a_link": lambda: _fill("{%", '<a href="https://x.com/', '">x</a>'),
    "merge_fields_in_a_link": lambda: _fill("$a", '<a href="https://x.com/', '">x</a>'),
    "huge_href": lambda: _fill("a", '<a href="https://x.com/', '">x</a>'),
    "huge_alt": lambda: _fill("a", '<img alt="', '">'),
    "entities_in_text": lambda: _fill("&amp;"),
    "bare_ampersands": lambda: _fill("&"),
    "unknown_entities": lambda: _fill("&a"),
    "numeric_entities": lambda: _fill("&#1;"),
    "entities_in_an_href": lambda: _fill("&amp;", '<a href="https://x.com/?', '">x</a>'),
    "deep_divs": lambda: _fill("<div>"),
    "deep_inline_tags": lambda: _fill("<b>"),
    "deep_lists": lambda: _fill("<ul><li>"),
    "paragraphs_of_one_letter": lambda: _fill("<p>x"),
    "alternating_tags": lambda: _fill("<div><b>"),
    "table_cells": lambda: _fill("<table><tr><td>"),
    "line_breaks": lambda: _fill("<br>"),
    "unclosed_links": lambda: _fill('<a href="https://x.com/">'),
    "distinct_links": lambda: "".join(
        f'<a href="https://x.com/{i}">l</a>' for i in range(BODY_LIMIT // 30)
    )[:BODY_LIMIT],
    "links_named_by_their_url": lambda: _fill('<a href="https://x.com/">https://x.com/</a>'),
    "unclosed_scripts": lambda: _fill("<script>"),
    "text_urls_on_one_line": lambda: _fill("https://x.com/a "),
    "text_url_with_closing_brackets": lambda: _fill(")", "https://x.com/"),
    "text_url_with_brackets_balanced": lambda: _fill("(", "https://x.com/", ")" * 1000),
    "one_huge_text_url": lambda: _fill("a", "https://x.com/"),
}


def _cpu(work: Callable[[], object]) -> float:
    """The CPU time of the work: the least of up to three tries when one is over the
    bound. A blow-up is slow every time; a stall of the machine around one try is not
    (a CI run once timed 2.1 s for a text that takes 0.04 s here, between two green
    runs of the same code)."""
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        work()
        best = min(best, time.process_time() - start)
        if best < CPU_SECONDS:
            break
    return best


@pytest.mark.slow
@pytest.mark.parametrize("shape", SHAPES)
def test_adversarial_body_is_processed_in_bounded_time(shape: str) -> None:
    body = SHAPES[shape]()
    assert len(body) <= BODY_LIMIT

    def html_copy() -> None:
        clear_caches()
        instrument(html=body, text=None, copy_id=1, codec=CODEC, base_url=BASE)

    def text_copy() -> None:
        clear_caches()
        instrument(html=None, text=body, copy_id=1, codec=CODEC, base_url=BASE)

    times = {
        "instrument html": _cpu(html_copy),
        "instrument text": _cpu(text_copy),
        "html_to_text": _cpu(lambda: html_to_text(body)),
    }
    assert all(seconds < CPU_SECONDS for seconds in times.values()), times


def test_quadratic_html_to_text_on_unclosed_attributes() -> None:
    # 180 KB: ~39 s with html.parser, which rescans the rest for every unfinished tag.
    assert _cpu(lambda: html_to_text('<a href="' * 20_000)) < CPU_SECONDS


def test_quadratic_placeholder_search_in_one_url() -> None:
    html = '<a href="https://x.com/' + "{{" * 20_000 + '">x</a>'
    seconds = _cpu(lambda: instrument(html=html, text=None, copy_id=1, codec=CODEC, base_url=BASE))
    assert seconds < CPU_SECONDS


def test_more_than_65535_links_are_capped_not_a_crash() -> None:
    html = "".join(f'<a href="https://x.com/{i}">{i}</a>' for i in range(70_000))
    result = instrument(html=html, text=None, copy_id=1, codec=CODEC, base_url=BASE)
    assert result.html is not None
    assert [link.position for link in result.links] == list(range(1000))
    assert result.links_over_limit > 0
    # The links past the cap are left exactly as written.
    assert '<a href="https://x.com/1000">1000</a>' in result.html
    assert '<a href="https://x.com/69999">69999</a>' in result.html


@given(
    st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none(), st.booleans()),
    st.one_of(st.integers(), st.floats(), st.text(max_size=3), st.none()),
)
def test_token_minting_never_raises_struct_error(copy_id: object, position: object) -> None:
    for mint in (
        lambda: CODEC.mint_click_token(copy_id, position, "https://x.com/"),  # type: ignore[arg-type]
        lambda: CODEC.mint_open_token(copy_id),  # type: ignore[arg-type]
        lambda: CODEC.mint_viewer_token(copy_id),  # type: ignore[arg-type]
    ):
        with contextlib.suppress(ValueError, TypeError):  # clear errors; struct.error is neither
            mint()


def test_huge_numeric_reference_does_not_crash() -> None:
    # int() refuses more than 4,300 decimal digits; html.unescape raised ValueError here.
    reference = "&#" + "9" * 5000 + ";"
    assert html_to_text(f"<p>a{reference}b</p>") == "a\ufffdb"
    result = instrument(
        html=f'<a href="https://x.com/{reference}">x</a>',
        text=None,
        copy_id=1,
        codec=CODEC,
        base_url=BASE,
    )
    assert [link.url for link in result.links] == ["https://x.com/\ufffd"]


# The plain-text part: what html_to_text writes, then what the text-link finder reads.


def _text_addresses(html: str) -> list[str]:
    return [found.url for found in find_text_urls(html_to_text(html))]


@pytest.mark.parametrize(
    ("html", "addresses"),
    [
        # A newline from a reference is dropped by the browser, but ends a text address.
        ('<a href="https://ex&#x0a;ample.com">https://ex&#x0a;ample.com</a>', ["https://example.com"]),
        ('<a href="https://ex&#x0a;ample.com/">read</a>', ["https://example.com/"]),
        ('<a href="https://ex&#x09;ample.com/p q">read</a>', ["https://example.com/p%20q"]),
        # Text written right after a link must not lengthen its address.
        ('<a href="https://x.com/">read</a>more', ["https://x.com/"]),
        ('<a href="https://x.com/">https://x.com/</a>more', ["https://x.com/"]),
        ('<a href="http://a.com/">http://a.com/</a><a href="https://b.com/">https://b.com/</a>',
         ["http://a.com/", "https://b.com/"]),
        ('x<a href="https://x.com/">https://x.com/</a>', ["https://x.com/"]),
        # Link text that shows another address is not carried into the plain text.
        ('<a href="https://evil.example/">https://good.example/</a>', ["https://evil.example/"]),
        # An address a reader would cut short is left out rather than cut.
        ('<a href="https://x.com/a.">read</a>', []),
        # A backslash is written as the browser reads it.
        ('<a href="https://good.example\\@evil.example/">x</a>',
         ["https://good.example/@evil.example/"]),
    ],
)  # fmt: skip
def test_text_part_newline_in_link_never_yields_another_address(
    html: str, addresses: list[str]
) -> None:
    assert _text_addresses(html) == addresses


# The edge matches the path as sent: only the canonical forms are ours.


async def _edge_get(path: str) -> tuple[httpx.Response, list[Hit]]:
    recorded: list[Hit] = []

    async def record(hit: Hit) -> None:
        recorded.append(hit)

    edge = TrackingEdge(CODEC, record, NetworkMap({}))
    transport = httpx.ASGITransport(app=edge)
    async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as client:
        response = await client.get(path)
    return response, recorded


@pytest.mark.asyncio
async def test_percent_encoded_edge_paths_are_not_our_urls() -> None:
    open_token = CODEC.mint_open_token(7)
    click_token = CODEC.mint_click_token(7, 0, "https://x.com/")
    encoded_open = "".join(f"%{ord(c):02X}" if i == 0 else c for i, c in enumerate(open_token))
    encoded_click = "%" + f"{ord(click_token[0]):02X}" + click_token[1:]

    ok, hits = await _edge_get(f"/t/o/{open_token}.gif")
    assert ok.status_code == 200 and len(hits) == 1
    for path in (
        f"/%74/o/{open_token}.gif",
        f"/t/%6F/{open_token}.gif",
        f"/t%2Fo/{open_token}.gif",
    ):
        r, hits = await _edge_get(path)
        assert r.status_code == 404 and hits == [], path
    # The pixel still answers any /t/o/ path, but an escaped token is not ours.
    r, hits = await _edge_get(f"/t/o/{encoded_open}.gif")
    assert r.status_code == 200 and r.content == PIXEL_GIF and hits == []

    ok, hits = await _edge_get(f"/t/c/{click_token}")
    assert ok.status_code == 302 and len(hits) == 1
    for path in (f"/%74/c/{click_token}", f"/t/%63/{click_token}", f"/t/c/{encoded_click}"):
        r, hits = await _edge_get(path)
        assert r.status_code == 404 and "location" not in r.headers and hits == [], path
        assert re.search(rb"Link not found", r.content)
