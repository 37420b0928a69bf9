"""The tracking edge: raw ASGI on the hot path, mounted at /t/.

No framework routing, no ORM session per request. A token is verified with the
key ring alone, so the pixel and the redirect answer even when the database is
away; the hit is appended to this process's journal and the answer goes out
once it is durable there (group commit and fdatasync, see ingest.py and
journal.py). The database is never waited for: a consumer stores the journal.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mailbeacon.kit.metrics import HITS_ACKNOWLEDGED
from mailbeacon.kit.net import client_address
from mailbeacon.kit.urls import web_destination
from mailbeacon.models.event import EventKind
from mailbeacon.tracking.hits import USER_AGENT_CHARS, Hit, new_uid
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.tokens import InvalidToken, TokenCodec

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Record = Callable[[Hit], Awaitable[None]]

# The smallest valid transparent GIF (GIF89a, 1x1, one transparent colour).
PIXEL_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff"
    b"!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
assert len(PIXEL_GIF) == 43

VIEWER_COOKIE = "mb_viewer"
_VIEWER_COOKIE_NAME = VIEWER_COOKIE.encode()

_PIXEL_HEADERS = [
    (b"content-type", b"image/gif"),
    (b"content-length", b"43"),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]
_NOT_FOUND_BODY = (
    b"<!doctype html><html><head><meta charset=utf-8><title>Link not found</title></head>"
    b"<body><h1>Link not found</h1><p>This link is not valid. It may have been copied "
    b"incompletely; please use the link from the original email.</p></body></html>"
)
_NOT_FOUND_HEADERS = [
    (b"content-type", b"text/html; charset=utf-8"),
    (b"content-length", str(len(_NOT_FOUND_BODY)).encode()),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
]
_PREFETCH_HEADERS = (b"purpose", b"sec-purpose", b"x-purpose", b"x-moz")


# Parsing is a pure function of the sealed destination, and one link of one email
# is clicked by many of its recipients: a parse per distinct destination is enough.
@functools.lru_cache(maxsize=4096)
def location_for(url: str) -> bytes | None:
    """The Location value for a sealed destination, or None if we must not go there.

    The destination is parsed as a browser parses the link it came from (WHATWG URL, see
    `mailbeacon.kit.urls`) and the header carries that parse serialised: printable ASCII
    that the browser reads back to the very same URL, so the redirect lands where the
    original link led. Reading it any other way can change the host: with RFC 3986 rules
    ``https://good.example\\@evil.example/`` is a link to evil.example, for a browser it
    goes to good.example. Anything but an http(s) URL that the parser accepts is refused,
    and so is any control character (one that could split the header never comes from
    `instrument`, which seals the link without them).
    """
    destination = web_destination(url)
    return destination.encode("ascii") if destination is not None else None


class TrackingEdge:
    def __init__(
        self,
        codec: TokenCodec,
        record: Record,
        networks: NetworkMap,
        *,
        trusted_proxies: int = 0,
    ) -> None:
        self._codec = codec
        self._record = record
        self._networks = networks
        # Hits come in runs from the same addresses (image proxies, scanners, a person
        # reopening), and the map never changes while it serves: each address is parsed
        # and looked up once. The addresses stay in this process's memory only.
        self._describe = functools.lru_cache(maxsize=4096)(networks.describe)
        # Settings.proxy_hops: TRUSTED_PROXIES, or one for the deprecated TRUST_FORWARDED_FOR.
        self._trusted_proxies = trusted_proxies
        # One counter per kind, looked up once: labels() takes a lock on every call.
        self._acknowledged = {kind: HITS_ACKNOWLEDGED.labels(kind.value) for kind in EventKind}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        # Match the path as it was sent, not as the server percent-decoded it: only the
        # canonical "/t/o/..." and "/t/c/..." are our URLs, so "/%74/o/..." or a token
        # with escapes in it is nothing we minted. Some servers leave the query on it.
        raw: bytes | None = scope.get("raw_path")
        path: str = raw.partition(b"?")[0].decode("latin-1") if raw else scope["path"]
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            await _respond(send, 405, [(b"allow", b"GET, HEAD"), (b"content-length", b"0")], b"")
            return
        head = method == "HEAD"
        if path.startswith("/t/o/"):
            await self._pixel(scope, send, path[5:], head)
        elif path.startswith("/t/c/"):
            await self._click(scope, send, path[5:], head)
        else:
            await _respond(send, 404, _NOT_FOUND_HEADERS, b"" if head else _NOT_FOUND_BODY)

    async def _pixel(self, scope: Scope, send: Send, tail: str, head: bool) -> None:
        copy_id = None
        if tail.endswith(".gif"):
            try:
                copy_id = self._codec.read_open_token(tail[:-4])
            except InvalidToken:
                copy_id = None
        if copy_id is not None:
            await self._record_safely(self._hit(scope, EventKind.OPEN, copy_id, None, head))
        # Valid or not, the same answer: nothing about the token leaks.
        await _respond(send, 200, _PIXEL_HEADERS, b"" if head else PIXEL_GIF)

    async def _click(self, scope: Scope, send: Send, token: str, head: bool) -> None:
        try:
            target = self._codec.read_click_token(token)
        except InvalidToken:
            target = None
        location = None if target is None else location_for(target.url)
        if target is None or location is None:
            await _respond(send, 404, _NOT_FOUND_HEADERS, b"" if head else _NOT_FOUND_BODY)
            return
        await self._record_safely(
            self._hit(scope, EventKind.CLICK, target.copy_id, target.position, head)
        )
        await _respond(
            send,
            302,
            [
                (b"location", location),
                (b"cache-control", b"no-store"),
                (b"referrer-policy", b"no-referrer"),
                (b"content-length", b"0"),
            ],
            b"",
        )

    async def _record_safely(self, hit: Hit) -> None:
        try:
            await self._record(hit)
        except Exception:
            # The answer must go out whatever happens to the bookkeeping (a full or
            # failing disk): say loudly that this hit is lost.
            log.critical(
                "could not write hit %s to the journal; it is lost", hit.uid, exc_info=True
            )
        else:
            self._acknowledged[hit.kind].inc()

    def _hit(
        self, scope: Scope, kind: EventKind, copy_id: int, position: int | None, head: bool
    ) -> Hit:
        ua = ""
        hint = None
        viewer = None
        forwarded: list[str] = []
        for name, value in scope["headers"]:
            if name == b"user-agent":
                ua = value.decode("latin-1")[:USER_AGENT_CHARS]
            elif name in _PREFETCH_HEADERS:
                hint = f"{name.decode()}: {value.decode('latin-1')[:60]}"
            elif name == b"cookie" and viewer is None:
                # HTTP/2 may split cookies over several headers: keep looking.
                viewer = self._viewer(value)
            elif name == b"x-forwarded-for" and self._trusted_proxies:
                forwarded.append(value.decode("latin-1"))
        client = scope.get("client")
        ip = client_address(client[0] if client else None, forwarded, self._trusted_proxies)
        ip_prefix, network = self._describe(ip) if ip else (None, None)
        now = time.time()
        return Hit(
            uid=new_uid(now),
            kind=kind,
            copy_id=copy_id,
            link_position=position,
            occurred_at=now,
            user_agent=ua,
            ip_prefix=ip_prefix,
            network=network,
            is_head=head,
            prefetch_hint=hint,
            viewer_user_id=viewer,
        )

    def _viewer(self, cookie_header: bytes) -> int | None:
        """The signed-in sender's id from our viewer cookie, if this header has it."""
        for pair in cookie_header.split(b";"):
            name, sep, value = pair.strip().partition(b"=")
            if sep and name == _VIEWER_COOKIE_NAME:
                try:
                    return self._codec.read_viewer_token(value.decode("ascii"))
                except (InvalidToken, UnicodeDecodeError):
                    return None
        return None


async def _respond(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
