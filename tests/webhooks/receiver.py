"""A webhook receiver on loopback: a small ASGI app under uvicorn on the test's own loop.

It records every request (headers and body) and answers with the statuses the test
queues (``answers``), else ``default``. ``closed_receiver`` binds the port first and
listens only when told to, so a test can have the receiver down (connections refused)
and then bring it up on the same URL.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks import Webhook


@dataclass
class Request:
    headers: dict[str, str]
    body: bytes
    path: str

    def verified(self, secret: str) -> Any:
        """The payload, once its signature verified with the Standard Webhooks library."""
        return Webhook(secret).verify(self.body, self.headers)


@dataclass
class ReceiverApp:
    requests: list[Request] = field(default_factory=list)
    answers: list[int] = field(default_factory=list)
    default: int = 204
    extra_headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        self.requests.append(Request(headers, body, scope["path"]))
        self.arrived.set()
        status = self.answers.pop(0) if self.answers else self.default
        await send({"type": "http.response.start", "status": status, "headers": self.extra_headers})
        await send({"type": "http.response.body", "body": b"ok"})

    def ids(self) -> list[str]:
        return [r.headers["webhook-id"] for r in self.requests]


class Receiver:
    """The app, its port, and the server when it is up."""

    def __init__(self, **tls: str) -> None:
        # ssl_certfile and ssl_keyfile for https (uvicorn's own options).
        self.tls = tls
        self.app = ReceiverApp()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self.server: uvicorn.Server | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks/mailbeacon"

    async def up(self) -> None:
        config = uvicorn.Config(
            self.app, lifespan="off", log_level="warning", access_log=False, **self.tls
        )
        self.server = uvicorn.Server(config)
        self._task = asyncio.create_task(self.server.serve(sockets=[self.sock]))
        for _ in range(500):  # uvicorn says it started only through this flag
            if self.server.started:
                return
            await asyncio.sleep(0.01)
        raise TimeoutError("the receiver did not start")

    async def down(self) -> None:
        if self.server is not None and self._task is not None:
            self.server.should_exit = True
            await asyncio.wait_for(self._task, 10)
        self.server, self._task = None, None
        with contextlib.suppress(OSError):
            self.sock.close()


@contextlib.asynccontextmanager
async def receiver(*, started: bool = True, **tls: str) -> AsyncIterator[Receiver]:
    r = Receiver(**tls)
    if started:
        await r.up()
    try:
        yield r
    finally:
        await r.down()
