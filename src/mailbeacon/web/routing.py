"""The route class of the JSON API: request bodies are parsed in a worker thread.

FastAPI parses a JSON body with ``json.loads`` on the event loop thread, which
also runs the tracking edge, and a send request may carry 32 MiB (see
``web.limits``). Routes of this class parse in a worker thread instead, with the
same parser (so the same documents are accepted and the same errors answered).

The loop is not free for the whole parse: ``json.loads`` decodes in C while
holding the interpreter lock, so other threads, the loop among them, wait for
each call to finish (about 0.1 s for 32 MiB of plain text, up to 0.4 s when it is
full of escapes, measured on the development machine). What the thread removes
is everything around it from the loop, and the loop gets its turn between one
request's parse and the next instead of running them back to back.

Use it as ``APIRouter(route_class=ApiRoute)``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool


def parse_json(body: bytes) -> Any:
    return json.loads(body)


class OffLoopJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = await run_in_threadpool(parse_json, await self.body())
        return self._json


class ApiRoute(APIRoute):
    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()

        async def handle_off_loop(request: Request) -> Response:
            return await handle(OffLoopJsonRequest(request.scope, request.receive))

        return handle_off_loop
