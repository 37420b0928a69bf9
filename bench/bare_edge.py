#!/usr/bin/env python3
"""The ceiling the HTTP server sets: an ASGI app that answers what the edge answers
and does nothing else (no token, no journal), served as `mailbeacon serve` serves.

    .venv/bin/python bench/bare_edge.py --port 8001 [--workers N] [--server uvicorn|granian]

The reference line of `bench/edge.py`: the distance between the edge and nginx
that the server's own per-request work accounts for, before the edge does any.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from mailbeacon.cli import run_server
from mailbeacon.tracking.edge import PIXEL_GIF

_PIXEL = [
    (b"content-type", b"image/gif"),
    (b"content-length", b"43"),
    (b"cache-control", b"no-store, no-cache, must-revalidate, max-age=0"),
    (b"pragma", b"no-cache"),
    (b"expires", b"0"),
]
_REDIRECT = [
    (b"location", b"https://example.com/landing"),
    (b"cache-control", b"no-store"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-length", b"0"),
]


async def app(
    scope: MutableMapping[str, Any],
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    send: Callable[[MutableMapping[str, Any]], Awaitable[None]],
) -> None:
    if scope["type"] == "lifespan":
        # Nothing to start; answered so that either server runs the app the same way.
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["type"] != "http":
        return
    if scope["path"].startswith("/t/c/"):
        await send({"type": "http.response.start", "status": 302, "headers": _REDIRECT})
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 200, "headers": _PIXEL})
        await send({"type": "http.response.body", "body": PIXEL_GIF})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn")
    args = parser.parse_args()
    run_server(
        args.server,
        "bare_edge:app",
        host="127.0.0.1",
        port=args.port,
        workers=args.workers,
        log_level="warning",
        factory=False,
    )


if __name__ == "__main__":
    main()
