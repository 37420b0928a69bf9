"""Who is asking is settled before a JSON API request's body is read.

FastAPI reads and parses a route's body before it runs the route's
dependencies, the sign-in check among them: left alone, an anonymous request
has its body received and parsed in full only to be told 401. This middleware
sits in front: a request with a body to the JSON API (every route there needs
a signed-in user) is checked for credentials first, and refused 401 at once
without them or with ones that sign nobody in. The route then resolves the
viewer again in its own unit of work (one indexed lookup).
"""

from __future__ import annotations

import json

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from mailbeacon.db import Database, is_unreachable
from mailbeacon.web.deps import API_SIGN_IN_MESSAGE, ViewerResolver

# JSON API paths anyone may ask for.
PUBLIC_API_PATHS = frozenset({"/api/openapi.json"})
DATABASE_DOWN = "The database is unavailable right now; try again in a moment."


class AuthenticateFirst:
    def __init__(self, app: ASGIApp, *, database: Database, resolve: ViewerResolver) -> None:
        self.app = app
        self.database = database
        self.resolve = resolve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or not scope["path"].startswith("/api/")
            or scope["path"] in PUBLIC_API_PATHS
            or not _has_body(scope)
        ):
            await self.app(scope, receive, send)
            return
        try:
            signed_in = await run_in_threadpool(self._signs_someone_in, scope)
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            await _answer(send, 503, DATABASE_DOWN, [(b"retry-after", b"5")])
            return
        if not signed_in:
            await _answer(send, 401, API_SIGN_IN_MESSAGE, [(b"www-authenticate", b"Bearer")])
            return
        await self.app(scope, receive, send)

    def _signs_someone_in(self, scope: Scope) -> bool:
        """Whether the request's token or session cookie belongs to someone (no body read).

        Without either, the resolver answers without a query.
        """
        with self.database.unit_of_work(immediate=False) as session:
            return self.resolve(Request(scope), session, touch=False) is not None


def _has_body(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (
            name == b"content-length" and value.strip().lstrip(b"0")
        ):
            return True
    return False


async def _answer(send: Send, status: int, message: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The body is never read: the connection cannot carry another request.
                (b"connection", b"close"),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
