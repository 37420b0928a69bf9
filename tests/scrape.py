"""Reading a /metrics answer the way Prometheus does (prometheus_client's own parser)."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

LOOPBACK = ("127.0.0.1", 40000)


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the exposition, or None if it is not there."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return None


async def scrape(app: object, client: tuple[str, int] = LOOPBACK, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, client=client)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=transport, base_url="http://mb.test") as c:
        return await c.get("/metrics", headers=headers)


async def scraped(app: object, name: str, **labels: str) -> float:
    """One sample from a loopback scrape; 0 for a counter not incremented yet."""
    r = await scrape(app)
    assert r.status_code == 200, r.text
    return sample(r.text, name, **labels) or 0.0
