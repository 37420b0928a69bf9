"""How large a request body the web app accepts, enforced before anything reads it.

An ASGI middleware in front of the whole web application (the tracking edge
answers GET and HEAD only and reads no body). A Content-Length above the limit
is answered 413 at once; a body sent without one (chunked) is counted as it is
received and refused 413 as soon as it passes the limit, so no handler ever
holds more than the limit in memory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Routes that carry a whole email (and later its attachments).
SEND_ROUTES = frozenset({("POST", "/compose"), ("POST", "/api/messages")})


class BodyTooLarge(Exception):
    """The body passed its limit while it was being read."""


class BodyLimit:
    """Refuses request bodies larger than ``max_bytes`` (``max_send_bytes`` on the routes
    that send an email) with 413, before or while they are read."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        max_send_bytes: int,
        send_routes: Iterable[tuple[str, str]] = SEND_ROUTES,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_send_bytes = max_send_bytes
        self.send_routes = frozenset(send_routes)

    def limit_for(self, method: str, path: str) -> int:
        return self.max_send_bytes if (method, path) in self.send_routes else self.max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is None:
            await _refuse(scope, send, 400, "The Content-Length header is not a number.")
            return
        if declared > limit:
            await _refuse(scope, send, 413, _too_large(limit))
            return

        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    exceeded = True
                    raise BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                # Whatever the application made of the interrupted read (an error
                # page, a 400 from a form parser), the answer is 413; the server
                # closes the connection since the body was not read to its end.
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await _refuse(scope, send, 413, _too_large(limit))


def _content_length(scope: Scope) -> int | None:
    """The declared body size (0 without the header); None if it is not a number."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() and len(value) < 20 else None
    return 0


def _too_large(limit: int) -> str:
    size = f"{limit / 1_000_000:.0f} MB" if limit >= 1_000_000 else f"{limit // 1024} KB"
    return f"The request is too large: this page takes at most {size}."


async def _refuse(scope: Scope, send: Send, status: int, message: str) -> None:
    if scope["path"].startswith("/api/"):
        body = json.dumps({"error": message}).encode()
        content_type = b"application/json"
    else:
        body = (
            "<!doctype html><html lang=en><head><meta charset=utf-8>"
            "<title>Request refused · mailbeacon</title>"
            '<link rel="stylesheet" href="/static/app.css"></head><body><main class="page">'
            f"<h1>Request refused</h1><p>{message}</p>"
            # The body was never read, so nothing of it can be shown again here; the
            # browser still has the form as it was typed.
            "<p>Go back with your browser's Back button: what you typed is still in the "
            'form there. <a href="/">mailbeacon</a></p></main></body></html>'
        ).encode()
        content_type = b"text/html; charset=utf-8"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                # The rest of the body is never read: the connection cannot be reused.
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
