"""``GET /metrics``: the Prometheus exposition, for this machine or a scraper with the token.

Raw ASGI beside the web app, not a route inside it: it answers while the database
is away (when the web app answers 503), and no session, cookie or CSRF machinery
runs for a scrape.

Who may scrape: a client connected from loopback whose request carries no
forwarding header (a reverse proxy on this machine relays everyone's requests
from loopback; the proxies we know of say so with X-Forwarded-For, Forwarded or
X-Real-IP), or anyone presenting ``Authorization: Bearer <METRICS_TOKEN>`` when
that setting is set. Everyone else gets 403.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mailbeacon.kit import metrics
from mailbeacon.kit.net import is_loopback_host

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

_FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
_FORBIDDEN = b"Metrics are served to this machine, or with the metrics token.\n"


class MetricsEndpoint:
    def __init__(self, token: str = "") -> None:
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, b"text/plain", b"", [(b"allow", b"GET, HEAD")])
            return
        if not self.allowed(scope):
            await _respond(send, 403, b"text/plain; charset=utf-8", _FORBIDDEN)
            return
        # Sources may query the database (mailbox sync): not on the event loop.
        body = await asyncio.to_thread(metrics.render)
        await _respond(send, 200, metrics.CONTENT_TYPE.encode(), body, head=method == "HEAD")

    def allowed(self, scope: Scope) -> bool:
        """Loopback without forwarding headers, or the right bearer token."""
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        if self._token:
            for name, value in headers:
                if name == b"authorization":
                    scheme, _, given = value.partition(b" ")
                    if scheme.lower() == b"bearer" and hmac.compare_digest(
                        given.strip(), self._token
                    ):
                        return True
        client = scope.get("client")
        if not client or not is_loopback_host(str(client[0])):
            return False
        return not any(name in _FORWARDING_HEADERS for name, _ in headers)


async def _respond(
    send: Send,
    status: int,
    content_type: bytes,
    body: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
    *,
    head: bool = False,
) -> None:
    headers = [
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else body})
