"""A tracked link lands exactly where the original would, or is not tracked at all.

Each attack is an href a browser reads differently from RFC 3986 (which `urllib.parse`
follows). The expected destinations are worked out by hand from the WHATWG URL Standard
(basic URL parser, section 4.4), not by the parser under test.
"""

from __future__ import annotations

import re

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.tracking.edge import TrackingEdge, location_for
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.instrument import instrument
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.tokens import MAX_CLICK_TOKEN_CHARS, TokenCodec

CODEC = TokenCodec([(3, bytes(range(64, 128)))])
BASE = "http://mb.test"


def sealed_destinations(html: str) -> list[str]:
    """The destinations sealed in the click tokens of an instrumented body."""
    result = instrument(html=html, text=None, copy_id=1, codec=CODEC, base_url=BASE)
    assert result.html is not None
    tokens = re.findall(r"http://mb\.test/t/c/([A-Za-z0-9_-]+)", result.html)
    return [CODEC.read_click_token(token).url for token in tokens]


async def redirect(url: str) -> httpx.Response:
    """What the edge answers for a click token sealing ``url``, the database away."""
    recorded: list[Hit] = []

    async def record(hit: Hit) -> None:
        recorded.append(hit)

    edge = TrackingEdge(CODEC, record, NetworkMap({}))
    token = CODEC.mint_click_token(1, 0, url)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url=BASE) as c:
        response = await c.get(f"/t/c/{token}")
    assert len(recorded) == (1 if response.status_code == 302 else 0)
    return response


# (href as written in the email, where a browser goes for it)
BROWSER_READINGS = [
    # A backslash is a slash in http(s): the host ends there, "@evil.example" is path.
    ("https://good.example\\@evil.example/", "https://good.example/@evil.example/"),
    ("https://good.example\\\\evil.example/x", "https://good.example//evil.example/x"),
    ("https:\\\\good.example/p", None),  # not picked up as a web link at all: left alone
    # Tabs and newlines vanish anywhere; outer spaces and C0 controls are trimmed.
    ("https://ex&#x0a;ample.com/", "https://example.com/"),
    ("https://good.example&#9;/\t@evil.example/", "https://good.example/@evil.example/"),
    ("  https://good.example/  ", "https://good.example/"),
    # The userinfo ends at the last "@": the host is what follows it (the userinfo is kept,
    # percent-encoded, as the browser would send it).
    ("https://good.example@evil.example/", "https://good.example@evil.example/"),
    ("https://a@good.example@evil.example/", "https://a%40good.example@evil.example/"),
    # Hosts are percent-decoded, mapped by IDNA and read as IPv4 numbers.
    ("https://%65vil.example/", "https://evil.example/"),
    ("https://\uff47ood.example/", "https://good.example/"),  # fullwidth g
    ("https://b\u00fccher.example/", "https://xn--bcher-kva.example/"),
    ("http://0x7f.1/", "http://127.0.0.1/"),
    ("HTTPS://GOOD.EXAMPLE:443/A", "https://good.example/A"),
    # Components are percent-encoded as each needs.
    ("https://good.example/a b?q=\u00fc#f g", "https://good.example/a%20b?q=%C3%BC#f%20g"),
    ("https://good.example/?q='x'", "https://good.example/?q=%27x%27"),
]


@pytest.mark.asyncio
@pytest.mark.parametrize(("href", "browser"), BROWSER_READINGS)
async def test_host_confusion_a_tracked_link_lands_where_the_original_does(
    href: str, browser: str | None
) -> None:
    html = f'<p>Hi</p><a href="{href}">go</a>'
    sealed = sealed_destinations(html)
    if browser is None:
        assert sealed == []
        return
    (destination,) = sealed
    r = await redirect(destination)
    assert r.status_code == 302
    assert r.headers["location"] == browser


@pytest.mark.parametrize(
    "href",
    [
        "https://exa%00mple.com/",  # a forbidden host code point once decoded
        "https://good.example:99999/",  # no such port
        "https://[::1/",  # an IPv6 address left open
        "https://good example/",  # a space in a host
        "https://good.example/a\x01b",  # a control character the parser would keep
    ],
)
def test_unparseable_destination_is_left_untracked(href: str) -> None:
    html = f'<p>Hi</p><a href="{href}">go</a>'
    result = instrument(html=html, text=None, copy_id=1, codec=CODEC, base_url=BASE)
    assert result.links == []
    assert result.html is not None and f'href="{href}"' in result.html


def test_destination_too_long_for_a_token_is_left_untracked() -> None:
    # Random-looking, so deflate cannot shrink it below the token limit.
    long_url = "https://good.example/" + "".join(f"{n * 7919 % 10007:x}" for n in range(3000))
    assert len(long_url) * 4 // 3 > MAX_CLICK_TOKEN_CHARS
    assert sealed_destinations(f'<a href="{long_url}">go</a>') == []


@pytest.mark.parametrize(
    "sealed",
    [
        "javascript:alert(1)",
        "//evil.example/",
        "https://good.example/\r\nSet-Cookie: a=b",
        "https://good.example/\t",
        "https:///",
        "data:text/html,<script>alert(1)</script>",
    ],
)
def test_header_injection_and_other_schemes_never_become_a_location(sealed: str) -> None:
    assert location_for(sealed) is None


@pytest.mark.asyncio
async def test_forged_tokens_for_a_backslash_destination_redirect_nowhere() -> None:
    token = CODEC.mint_click_token(1, 0, "https://good.example\\@evil.example/")
    other = TokenCodec([(3, bytes(64))]).mint_click_token(1, 0, "https://evil.example/")
    recorded: list[Hit] = []

    async def record(hit: Hit) -> None:
        recorded.append(hit)

    edge = TrackingEdge(CODEC, record, NetworkMap({}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=edge), base_url=BASE) as c:
        for bad in (
            token[:-1],
            token[:20] + ("A" if token[20] != "A" else "B") + token[21:],
            other,
        ):
            r = await c.get(f"/t/c/{bad}")
            assert r.status_code == 404
            assert "location" not in r.headers
    assert recorded == []


_URLISH = st.text(alphabet="hts:/\\@.%2e5cx?#&=[]: \t\u00fc\uff47", max_size=40)


@given(st.sampled_from(["https://", "http://", "HTTPS://", "https:\\\\"]), _URLISH)
def test_location_parses_back_to_itself(scheme: str, rest: str) -> None:
    """What the edge sends is a fixed point: a browser reading the Location header gets the
    very URL the edge computed, so no second interpretation can differ."""
    location = location_for(scheme + rest)
    if location is None:
        return
    text = location.decode("ascii")
    assert re.fullmatch(r"https?://[\x21-\x7e]+", text)
    assert location_for(text) == location
