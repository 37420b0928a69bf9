"""Every link rewritten in the corpus redirects, through the edge, to where it pointed."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import quote

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


def _expected_location(url: str) -> str:
    return quote(url, safe="!#$%&'()*+,-./:;=?@[]~_")


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
