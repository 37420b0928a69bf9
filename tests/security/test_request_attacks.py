"""Large and anonymous request bodies: refused before they are read, and never stalling
the tracking edge that shares the event loop with the web app.

Most tests speak ASGI to the real application with a body source that counts what
was pulled from it, so "refused before it was read" is observed, not inferred. The
last one runs `mailbeacon serve` and measures pixel answers while large bodies
arrive; its bound (500 ms) is a liveness bound, far above a normal answer (a few
milliseconds), not a performance target (those are in bench/).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
import pytest_asyncio
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import User
from mailbeacon.runtime import Runtime
from tests.client import csrf_of, make_client, sign_in
from tests.factories.accounts import PASSWORD, create_user
from tests.server import free_port, server_env, serving

MIB = 1024 * 1024
CHUNK = 64 * 1024


@dataclass
class Exchange:
    """One request spoken to an ASGI app: what it pulled of the body, what it answered."""

    status: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    chunks_pulled: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


async def exchange(
    app: Any,
    method: str,
    path: str,
    *,
    headers: dict[str, str] | None = None,
    chunks: int = 0,
    chunk: bytes = b"x" * CHUNK,
    content_length: int | None = None,
) -> Exchange:
    """Send ``chunks`` pieces of body (chunked unless ``content_length`` is given)."""
    result = Exchange()
    done = asyncio.Event()
    sent_headers = {k.lower(): v for k, v in (headers or {}).items()}
    if content_length is not None:
        sent_headers["content-length"] = str(content_length)
    elif chunks:
        sent_headers["transfer-encoding"] = "chunked"
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.encode(), v.encode()) for k, v in sent_headers.items()],
        "client": ("203.0.113.9", 50000),
        "server": ("mb.test", 80),
    }

    async def receive() -> dict[str, Any]:
        if result.chunks_pulled < chunks:
            result.chunks_pulled += 1
            more = result.chunks_pulled < chunks
            return {"type": "http.request", "body": chunk, "more_body": more}
        if chunks == 0 and result.chunks_pulled == 0:
            result.chunks_pulled = -1  # the (empty) body was asked for
            return {"type": "http.request", "body": b"", "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            result.status = message["status"]
            result.headers = {k.decode(): v.decode() for k, v in message["headers"]}
        elif message["type"] == "http.response.body":
            result.body += message.get("body", b"")
            if not message.get("more_body"):
                done.set()

    await asyncio.wait_for(app(scope, receive, send), 30)
    return result


@pytest_asyncio.fixture
async def signed_in(
    app: MailbeaconApp, client: httpx.AsyncClient, database: Database
) -> dict[str, str]:
    """The headers of a browser session's JSON call (cookie and CSRF token)."""
    create_user(database)
    csrf = await sign_in(client)
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    return {"cookie": cookie, "x-csrf-token": csrf, "content-type": "application/json"}


@pytest.mark.asyncio
async def test_a_body_declared_too_large_is_refused_413_before_any_of_it_is_read(
    app: MailbeaconApp,
) -> None:
    # The review's case: 50 MB of JSON to an endpoint that takes a list of ids.
    r = await exchange(
        app,
        "POST",
        "/api/notifications/read",
        headers={"content-type": "application/json"},
        chunks=800,
        content_length=800 * CHUNK,
    )
    assert r.status == 413
    assert r.chunks_pulled == 0
    assert "at most 256 KB" in r.json()["error"]
    assert r.headers["connection"] == "close"


@pytest.mark.asyncio
async def test_a_chunked_body_is_counted_and_cut_off_at_the_limit(app: MailbeaconApp) -> None:
    # No Content-Length: the sign-in form (anyone may post it) gets 4 MiB in pieces.
    r = await exchange(
        app,
        "POST",
        "/sign-in",
        headers={"content-type": "application/x-www-form-urlencoded"},
        chunks=64,
    )
    assert r.status == 413
    limit = Settings().MAX_REQUEST_BYTES
    assert r.chunks_pulled == limit // CHUNK + 1  # the piece that went past it, no more
    assert b"Request refused" in r.body


@pytest.mark.asyncio
async def test_sending_an_email_may_carry_more_but_not_without_end(
    app: MailbeaconApp, signed_in: dict[str, str]
) -> None:
    settings = Settings()
    # A 1 MiB email is far above the general limit and well within the sending one.
    body = json.dumps({"to": ["ann@example.org"], "body_html": "<p>" + "x" * MIB + "</p>"})
    r = await exchange(
        app,
        "POST",
        "/api/messages",
        headers=signed_in,
        chunks=1,
        chunk=body.encode(),
        content_length=len(body),
    )
    assert r.status == 409  # read, parsed and planned: no mailbox is connected
    r = await exchange(
        app,
        "POST",
        "/api/messages",
        headers=signed_in,
        chunks=1,
        content_length=settings.MAX_SEND_REQUEST_BYTES + 1,
    )
    assert r.status == 413
    assert r.chunks_pulled == 0
    # A body that never ends: refused once it passes the limit (which leaves room for
    # 20 MB of attachments base64-encoded), never read further.
    endless = settings.MAX_SEND_REQUEST_BYTES // CHUNK + 100
    r = await exchange(app, "POST", "/api/messages", headers=signed_in, chunks=endless)
    assert r.status == 413
    assert r.chunks_pulled == settings.MAX_SEND_REQUEST_BYTES // CHUNK + 1


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"authorization": "Bearer mb_not-a-real-token"},
        {"authorization": "Basic c2FsbHk6aHVudGVyMg=="},
        {"cookie": "mb_session=not-a-real-session"},
    ],
)
async def test_an_anonymous_body_to_the_api_is_refused_401_before_it_is_read(
    app: MailbeaconApp, credentials: dict[str, str]
) -> None:
    # Well within the sending limit: only the missing sign-in refuses it.
    for content_length in (10 * MIB, None):
        r = await exchange(
            app,
            "POST",
            "/api/messages",
            headers={"content-type": "application/json", **credentials},
            chunks=160,
            content_length=content_length,
        )
        assert r.status == 401
        assert r.headers["www-authenticate"] == "Bearer"
        assert "Sign in" in r.json()["error"]
        assert r.chunks_pulled == 0


@pytest.mark.asyncio
async def test_a_signed_in_body_is_read_after_the_credentials_are_checked(
    app: MailbeaconApp, database: Database
) -> None:
    user_id = create_user(database)
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        _, token = account_service.create_api_token(s, user, "script", ["read", "send"])
    body = json.dumps({"ids": [1]}).encode()
    r = await exchange(
        app,
        "POST",
        "/api/notifications/read",
        headers={"authorization": f"Bearer {token}", "content-type": "application/json"},
        chunks=1,
        chunk=body,
        content_length=len(body),
    )
    assert r.chunks_pulled == 1
    # Signed in, the body read and parsed: there is no notification 1 to mark.
    assert r.status == 404


class Big(BaseModel):
    html: str


@pytest.mark.asyncio
async def test_a_large_json_body_is_parsed_in_a_worker_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from mailbeacon.web.routing import ApiRoute

    router = APIRouter(route_class=ApiRoute)

    @router.post("/big")
    def big(body: Big) -> int:
        return len(body.html)

    web = FastAPI()
    web.include_router(router)
    real_loads = json.loads
    decoded_on: list[int] = []

    def watched_loads(*args: Any, **kwargs: Any) -> Any:
        decoded_on.append(threading.get_ident())
        return real_loads(*args, **kwargs)

    monkeypatch.setattr(json, "loads", watched_loads)
    payload = json.dumps({"html": "é\n" * MIB}).encode()
    r = await exchange(
        web,
        "POST",
        "/big",
        headers={"content-type": "application/json"},
        chunks=1,
        chunk=payload,
        content_length=len(payload),
    )
    assert r.status == 200
    assert r.body == b"2097152"
    assert decoded_on, "the body was not parsed with json.loads"
    assert threading.get_ident() not in decoded_on, "the body was parsed on the event loop"
    # Malformed JSON is answered as FastAPI answers it.
    r = await exchange(
        web,
        "POST",
        "/big",
        headers={"content-type": "application/json"},
        chunks=1,
        chunk=b'{"html": "x',
        content_length=11,
    )
    assert r.status == 422
    assert r.json()["detail"][0]["type"] == "json_invalid"


@pytest.mark.asyncio
async def test_every_json_api_route_parses_its_body_off_the_event_loop(app: MailbeaconApp) -> None:
    from fastapi.params import Form
    from fastapi.routing import APIRoute

    from mailbeacon.web.routing import ApiRoute

    def routes(items: list[Any]) -> Iterator[APIRoute]:
        for item in items:
            included = getattr(item, "original_router", None)
            if included is not None:
                yield from routes(included.routes)
            elif isinstance(item, APIRoute):
                yield item

    json_routes = [
        r
        for r in routes(app.web.routes)
        if r.body_field is not None and not isinstance(r.body_field.field_info, Form)
    ]
    assert any(r.path == "/api/messages" for r in json_routes)
    on_the_loop = sorted(
        f"{sorted(r.methods)[0]} {r.path}" for r in json_routes if not isinstance(r, ApiRoute)
    )
    assert on_the_loop == [], "declare APIRouter(route_class=web.routing.ApiRoute)"


@pytest.mark.asyncio
async def test_an_https_site_tells_browsers_never_to_use_plain_http(settings: Settings) -> None:
    secure = MailbeaconApp(
        Runtime.from_settings(settings.model_copy(update={"BASE_URL": "https://mail.example"}))
    )
    plain = MailbeaconApp(Runtime.from_settings(settings))
    try:
        async with make_client(secure, base_url="https://mb.test") as c:
            for path in ("/sign-in", "/api/me", "/static/app.css", "/healthz"):
                r = await c.get(path)
                assert (
                    r.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains"
                ), path
            # Not on the tracking edge: recipients' mail clients are no browsing session.
            assert "strict-transport-security" not in (await c.get("/t/o/x.gif")).headers
        async with make_client(plain) as c:
            assert "strict-transport-security" not in (await c.get("/sign-in")).headers
    finally:
        secure.runtime.database.dispose()
        plain.runtime.database.dispose()


# ------------------------------------------------------------------ a real server


def _browser_session(port: int) -> dict[str, str]:
    """Sign in over HTTP as a browser does; the headers of its JSON calls."""

    def request(
        method: str, path: str, body: str = "", cookie: str = ""
    ) -> tuple[http.client.HTTPResponse, str]:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        headers = {"cookie": cookie}
        if body:
            headers["content-type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        text = response.read().decode()
        conn.close()
        return response, text

    def cookies(response: http.client.HTTPResponse) -> dict[str, str]:
        found = {}
        for value in response.headers.get_all("set-cookie") or []:
            name, _, rest = value.partition("=")
            found[name] = rest.split(";", 1)[0]
        return found

    page, _text = request("GET", "/sign-in")
    anon = cookies(page)["mb_csrf"]
    form = urlencode({"email": "sally@example.com", "password": PASSWORD, "csrf_token": anon})
    signed, _ = request("POST", "/sign-in", form, cookie=f"mb_csrf={anon}")
    assert signed.status == 303
    session = f"mb_session={cookies(signed)['mb_session']}"
    _, settings_page = request("GET", "/settings/email-sync", cookie=session)
    return {
        "cookie": session,
        "x-csrf-token": csrf_of(settings_page),
        "content-type": "application/json",
    }


def _post(
    port: int, path: str, headers: dict[str, str], body: Iterator[bytes], length: int | None
) -> tuple[int | None, float]:
    """POST a body as fast as the server takes it; (status or None, seconds to the answer)."""
    started = time.perf_counter()
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head.append(
            f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
        )
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        try:
            for piece in body:
                if length is None:
                    piece = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
                sock.sendall(piece)
            if length is None:
                sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server answered and closed without reading the rest: the point
        try:
            status_line = sock.makefile("rb").readline()
        except OSError:
            return None, time.perf_counter() - started
        status = int(status_line.split()[1]) if status_line else None
        return status, time.perf_counter() - started
    finally:
        sock.close()


def _pieces(total: int, piece: bytes = b"7" * CHUNK) -> Iterator[bytes]:
    for _ in range(total // len(piece)):
        yield piece


def _ids(total: int) -> tuple[Iterator[bytes], int]:
    """A valid JSON body of about ``total`` bytes for POST /api/notifications/read: the
    review's case, the most work for a parser per byte (millions of list items)."""
    head, tail = b'{"ids": [', b"1]}"
    pieces = total // CHUNK

    def body() -> Iterator[bytes]:
        yield head
        yield from _pieces(pieces * CHUNK, b"1," * (CHUNK // 2))
        yield tail

    return body(), len(head) + pieces * CHUNK + len(tail)


@pytest.fixture
def server(tmp_path: Path, db_url: str, database: Database) -> Iterator[int]:
    create_user(database)
    port = free_port()
    env = server_env(tmp_path / "data", db_url, port, DEMO_SMTP_PORT="0", RUN_WORKER="false")
    with serving(env, port):
        yield port


@pytest.mark.slow
def test_pixels_keep_answering_while_large_bodies_arrive(server: int) -> None:
    port = server
    session = _browser_session(port)
    # The largest email the API takes, as HTML full of escapes (slow JSON to decode).
    email = json.dumps(
        {"to": ["ann@example.org"], "body_html": '<p class="x">é</p>\n' * (MIB + MIB // 8)}
    )
    email_bytes = email.encode()
    assert len(email_bytes) < Settings().MAX_SEND_REQUEST_BYTES
    latencies: list[float] = []
    outcomes: dict[str, tuple[int | None, float]] = {}
    attacking = threading.Event()
    attacking.set()

    def poll_pixels() -> None:
        while attacking.is_set():
            started = time.perf_counter()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", "/t/o/not-a-token.gif")
            response = conn.getresponse()
            assert response.read()[:6] == b"GIF89a"
            conn.close()
            latencies.append(time.perf_counter() - started)
            time.sleep(0.02)

    def attack(
        name: str, path: str, headers: dict[str, str], body: Iterator[bytes], length: int | None
    ) -> None:
        outcomes[name] = _post(port, path, headers, body, length)

    json_type = {"content-type": "application/json"}
    ids_50, ids_50_length = _ids(50 * MIB)
    ids_30, ids_30_length = _ids(30 * MIB)
    ids_chunked, _ = _ids(30 * MIB)
    attacks = [
        ("signed-in email", "/api/messages", session, iter([email_bytes]), len(email_bytes)),
        ("anonymous 50 MB", "/api/notifications/read", json_type, ids_50, ids_50_length),
        ("anonymous chunked", "/api/notifications/read", json_type, ids_chunked, None),
        (
            "bogus token 30 MB",
            "/api/messages",
            {**json_type, "authorization": "Bearer mb_made-up"},
            ids_30,
            ids_30_length,
        ),
        (
            "anonymous form 50 MB",
            "/sign-in",
            {"content-type": "application/x-www-form-urlencoded"},
            _pieces(50 * MIB),
            None,
        ),
    ]
    poller = threading.Thread(target=poll_pixels)
    poller.start()
    time.sleep(0.2)
    threads = [threading.Thread(target=attack, args=a) for a in attacks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    time.sleep(0.2)
    attacking.clear()
    poller.join(30)

    assert len(latencies) > 10
    worst = max(latencies)
    print(f"pixel answers: {len(latencies)}, slowest {worst * 1000:.0f} ms; outcomes {outcomes}")
    assert worst < 0.5, f"a pixel waited {worst:.3f} s; outcomes {outcomes}"
    # Read and parsed in full, then refused by the mail domain (too long, or no mailbox).
    assert outcomes["signed-in email"][0] in (409, 422)
    for name in ("anonymous 50 MB", "anonymous form 50 MB"):
        assert outcomes[name][0] in (413, None), (name, outcomes[name])
    for name in ("anonymous chunked", "bogus token 30 MB"):
        assert outcomes[name][0] in (401, None), (name, outcomes[name])
