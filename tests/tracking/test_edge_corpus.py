"""Every link rewritten in the corpus redirects, through the edge, to where it pointed."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from mailbeacon.tracking.charset import decode_html_bytes
from mailbeacon.tracking.edge import TrackingEdge
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.instrument import instrument
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.tokens import TokenCodec

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "html"
BASE = "http://mb.test"


# The corpus links are plain absolute ASCII addresses: no backslash, userinfo, escapes in
# the host, or characters that the URL Standard's encode sets would change.
_PLAIN_URL = re.compile(
    r"https?://[A-Za-z0-9.-]+(?::[0-9]+)?(?:[/?#][A-Za-z0-9._~:/?#@!$&()*+,;=%-]*)?"
)
_DEFAULT_PORT = {"http": 80, "https": 443}


def _expected_location(url: str) -> str:
    """Where a browser goes for a plain link, worked out without a WHATWG parser: the URL
    Standard's serialisation (section 4.5) of such an address only lower-cases the scheme
    and host, drops the scheme's default port and gives an empty path its "/"."""
    assert _PLAIN_URL.fullmatch(url), f"not a plain address, the oracle cannot read it: {url}"
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    port = f":{parts.port}" if parts.port not in (None, _DEFAULT_PORT[scheme]) else ""
    rest = url[len(f"{parts.scheme}://{parts.netloc}") :]
    return f"{scheme}://{host}{port}{rest if rest.startswith('/') else '/' + rest}"


@pytest.mark.asyncio
async def test_every_corpus_link_redirects_to_its_original_destination() -> None:
    if not CORPUS.is_dir():
        pytest.skip(f"corpus not found at {CORPUS}")
    codec = TokenCodec([(1, os.urandom(64))])
    recorded: list[Hit] = []

    async def record(hit: Hit) -> None:
        recorded.append(hit)

    edge = TrackingEdge(codec, record, NetworkMap({}))
    checked = 0
    transport = httpx.ASGITransport(app=edge)
    async with httpx.AsyncClient(transport=transport, base_url=BASE) as client:
        for number, path in enumerate(sorted(CORPUS.iterdir())):
            html, _ = decode_html_bytes(path.read_bytes())
            result = instrument(html=html, text=None, copy_id=number, codec=codec, base_url=BASE)
            assert result.html is not None
            for link in result.links:
                token = codec.mint_click_token(number, link.position, link.url)
                assert f"{BASE}/t/c/{token}" in result.html, path.name
                r = await client.get(f"/t/c/{token}")
                assert r.status_code == 302, (path.name, link.url)
                assert r.headers["location"] == _expected_location(link.url)
                checked += 1
    assert (
        checked >= 100
    )  # the corpus carries 136 distinct web links once placeholders are left out
    assert len(recorded) == checked
    assert {h.kind for h in recorded} == {"click"}
