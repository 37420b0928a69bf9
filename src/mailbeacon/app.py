"""The web application (pages and JSON API) beside the tracking edge.

It gathers every domain's routers, hands the routes what they may ask for
(``web.deps.provided``), installs how a request is signed in (accounts), and
maps errors to answers in one place: routes raise domain errors and never
build error responses for them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbeacon import __version__
from mailbeacon.accounts import endpoints as account_endpoints
from mailbeacon.accounts import joining as account_joining
from mailbeacon.accounts import views as account_views
from mailbeacon.accounts.auth import resolve_viewer
from mailbeacon.accounts.security import VIEWER_COOKIE_MAX_AGE
from mailbeacon.db import is_unreachable
from mailbeacon.kit.cursors import InvalidCursor
from mailbeacon.kit.errors import Conflict, DomainError, Forbidden, InvalidInput, NotFound
from mailbeacon.mail import endpoints as mail_endpoints
from mailbeacon.mail import views as mail_views
from mailbeacon.models.account import TokenScope
from mailbeacon.notify import endpoints as notify_endpoints
from mailbeacon.notify import views as notify_views
from mailbeacon.privacy import endpoints as privacy_endpoints
from mailbeacon.privacy import public as privacy_public
from mailbeacon.privacy import views as privacy_views
from mailbeacon.runtime import Runtime
from mailbeacon.sync import views as sync_views
from mailbeacon.tracking.edge import VIEWER_COOKIE
from mailbeacon.web.auth_first import AuthenticateFirst
from mailbeacon.web.deps import (
    API_SIGN_IN_MESSAGE,
    CsrfRejected,
    OptionalViewer,
    ScopeMissing,
    SignInRequired,
    TokenPolicy,
    is_api_request,
    render,
)
from mailbeacon.web.limits import BodyLimit
from mailbeacon.webhooks import endpoints as webhook_endpoints
from mailbeacon.webhooks import views as webhook_views

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "web" / "static"

# App pages show no email content, so they may load images from this site and
# data: URLs only. Pages that show email content (compose, the demo inbox, an
# email's detail) set their own policy.
DEFAULT_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]
_HSTS = b"max-age=31536000; includeSubDomains"
# What an API token needs beyond the default of web.deps.TokenPolicy (``read`` to
# read, ``admin`` for any other method): sending and retrying need ``send``.
TOKEN_SCOPES = {
    ("POST", "/api/messages"): TokenScope.SEND,
    ("POST", "/api/mail/{message_id}/copies/{copy_id}/retry"): TokenScope.SEND,
    ("POST", "/api/messages/{message_id}/copies/{copy_id}/retry"): TokenScope.SEND,
    ("POST", "/compose"): TokenScope.SEND,
    ("POST", "/mail/{message_id}/copies/{copy_id}/retry"): TokenScope.SEND,
    # A script that reads the feed may mark what it read: the user's own inbox
    # state, not a setting.
    ("POST", "/api/notifications/read"): TokenScope.READ,
    ("POST", "/api/notifications/read-all"): TokenScope.READ,
    ("POST", "/api/notifications/{notification_id}/read"): TokenScope.READ,
    # Reads that hand out every contact's data, or the organisation's settings: admin.
    ("GET", "/api/contacts/{address}/export"): TokenScope.ADMIN,
    ("GET", "/contacts/{address}/export"): TokenScope.ADMIN,
    ("GET", "/api/org/privacy"): TokenScope.ADMIN,
    ("GET", "/api/audit"): TokenScope.ADMIN,
    ("GET", "/api/audit/export"): TokenScope.ADMIN,
    ("GET", "/settings/audit.csv"): TokenScope.ADMIN,
    # Webhooks decide where the user's tracking data goes: admin, reads included.
    ("GET", "/api/webhooks"): TokenScope.ADMIN,
    ("GET", "/api/webhooks/{webhook_id}"): TokenScope.ADMIN,
    ("GET", "/api/webhooks/{webhook_id}/deliveries"): TokenScope.ADMIN,
    ("GET", "/settings/webhooks"): TokenScope.ADMIN,
    ("GET", "/settings/webhooks/{endpoint_id}"): TokenScope.ADMIN,
}
DATABASE_DOWN = (
    "The database is unavailable right now. Tracked links and pixels keep working; "
    "try again in a moment."
)


class ErrorOut(BaseModel):
    """What every error of the JSON API answers (documented once for all of its operations)."""

    error: str = Field(description="What went wrong, in one sentence")
    errors: dict[str, list[str]] = Field(
        default_factory=dict, description="Invalid input only: messages per field"
    )


# The errors any operation of the JSON API may answer, besides those it documents itself.
_API_ERRORS: dict[str, str] = {
    "400": "The request could not be read (a body that is not UTF-8 text, a Content-Length "
    "that is not a number)",
    "401": "No API token, or one that is unknown, revoked or expired",
    "403": "The API token lacks the scope this operation needs, or a browser session "
    "sent no CSRF token",
    "503": "The database is unavailable; try again in a moment",
}
_API_INPUT_ERRORS: dict[str, str] = {"422": "Invalid input, with messages per field"}
_API_BODY_ERRORS: dict[str, str] = {"413": "The body is larger than this server accepts"}
_API_ERROR_HEADERS: dict[str, dict[str, Any]] = {
    "401": {
        "WWW-Authenticate": {"required": True, "schema": {"type": "string", "const": "Bearer"}}
    },
    "503": {"Retry-After": {"required": True, "schema": {"type": "string"}}},
}


class SecurityHeaders:
    """Adds the headers every web response carries, unless a handler set its own.

    With ``hsts`` (the site is served over https) browsers are told to use nothing
    but https for it and its subdomains for a year (RFC 6797), so that no later
    visit starts in clear text where the session cookie could be stripped.
    """

    def __init__(self, app: ASGIApp, *, hsts: bool = False) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        static = scope["path"].startswith("/static/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = list(_SECURITY_HEADERS)
                extra.append((b"content-security-policy", DEFAULT_CSP.encode()))
                if self.hsts:
                    extra.append((b"strict-transport-security", _HSTS))
                if not static:
                    # Pages hold one person's data: never keep them in shared caches.
                    extra.append((b"cache-control", b"no-store"))
                headers.extend((k, v) for k, v in extra if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class DatabaseGate:
    """While the database is not ready (``serve`` started while it was away), every page
    and API call answers 503 at once; liveness and static files still answer."""

    OPEN_PATHS = ("/healthz", "/static/")

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or self.runtime.database_ready
            or scope["path"].startswith(self.OPEN_PATHS)
        ):
            await self.app(scope, receive, send)
            return
        if scope["path"].startswith("/api/"):
            body = json.dumps({"error": DATABASE_DOWN}).encode()
            content_type = b"application/json"
        else:
            body = _DOWN_PAGE.encode()
            content_type = b"text/html; charset=utf-8"
        await send(
            {
                "type": "http.response.start",
                "status": 503,
                "headers": [
                    (b"content-type", content_type),
                    (b"content-length", str(len(body)).encode()),
                    (b"retry-after", b"5"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


_DOWN_PAGE = (
    "<!doctype html><html lang=en><head><meta charset=utf-8>"
    '<meta http-equiv="refresh" content="10">'
    "<title>Database unavailable · mailbeacon</title>"
    '<link rel="stylesheet" href="/static/app.css"></head><body><main class="page">'
    f"<h1>Database unavailable</h1><p>{DATABASE_DOWN}</p>"
    "<p>This page reloads by itself.</p></main></body></html>"
)


class SenderCookie:
    """Sets or clears the tracking edge's viewer cookie when a route said whose browser
    this is (``web.deps.mark_browser_as_sender``).

    The cookie carries a token minted with the installation's token keys; the edge
    reads it to label the sender's own hits ``self``.
    """

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime
        self.secure = runtime.settings.BASE_URL.lower().startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                wanted = scope.get("state", {}).get("sender_cookie")
                if wanted is not None:
                    headers = list(message.get("headers", []))
                    headers.append((b"set-cookie", self._cookie(wanted[0]).encode("latin-1")))
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _cookie(self, sender_id: int | None) -> str:
        value, max_age = "", 0
        if sender_id is not None:
            value, max_age = self.runtime.codec.mint_viewer_token(sender_id), VIEWER_COOKIE_MAX_AGE
        secure = "; Secure" if self.secure else ""
        return (
            f"{VIEWER_COOKIE}={value}; Max-Age={max_age}; Path=/t/; HttpOnly; SameSite=Lax{secure}"
        )


def _error_page(request: Request, status: int, title: str, message: str) -> Response:
    if is_api_request(request):
        return JSONResponse({"error": message}, status_code=status)
    return render(request, "error.html", {"title": title, "message": message}, status_code=status)


def create_web_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="mailbeacon",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    app.state.services = runtime.services()
    app.state.resolve_viewer = resolve_viewer
    app.state.token_policy = policy = TokenPolicy(TOKEN_SCOPES)
    settings = runtime.settings
    # Outermost last: sizes are checked before anything else, credentials once the
    # database is known to be there, both before a body is read.
    app.add_middleware(SenderCookie, runtime=runtime)
    app.add_middleware(AuthenticateFirst, database=runtime.database, resolve=resolve_viewer)
    app.add_middleware(DatabaseGate, runtime=runtime)
    app.add_middleware(
        BodyLimit,
        max_bytes=settings.MAX_REQUEST_BYTES,
        max_send_bytes=settings.MAX_SEND_REQUEST_BYTES,
    )
    app.add_middleware(SecurityHeaders, hsts=settings.BASE_URL.lower().startswith("https://"))
    _document_token_scopes(app, policy)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        """Liveness and whether the database answers (the edge works without it)."""
        try:
            with runtime.database.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            database = "up"
        except Exception:
            database = "down"
        return {"status": "ok", "database": database, "version": __version__}

    @app.get("/", include_in_schema=False)
    def home(viewer: OptionalViewer) -> Response:
        return RedirectResponse("/compose" if viewer else "/sign-in", status_code=303)

    app.include_router(account_views.router)
    app.include_router(account_joining.router)
    app.include_router(account_endpoints.router)
    app.include_router(mail_views.router)
    app.include_router(mail_endpoints.router)
    app.include_router(notify_views.router)
    app.include_router(notify_endpoints.router)
    app.include_router(sync_views.router)
    app.include_router(privacy_views.router)
    app.include_router(privacy_endpoints.router)
    app.include_router(privacy_public.router)
    app.include_router(webhook_views.router)
    app.include_router(webhook_endpoints.router)
    _map_errors(app)
    return app


def _document_token_scopes(app: FastAPI, policy: TokenPolicy) -> None:
    """Each operation of /api/openapi.json says which API token scope it needs."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document_errors(policy.document(build()))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Every operation of the JSON API says how it is signed in and which errors it may
    answer, each with the body ``_map_errors`` gives it (``ErrorOut``)."""
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {})["ErrorOut"] = ErrorOut.model_json_schema()
    components["securitySchemes"] = {
        "apiToken": {
            "type": "http",
            "scheme": "bearer",
            "description": "An API token from Settings > API tokens (a browser session "
            "signed in to this site works too).",
        }
    }
    body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
    for path, operations in schema.get("paths", {}).items():
        if not path.startswith("/api/"):
            continue
        for operation in operations.values():
            operation["security"] = [{"apiToken": []}]
            errors = dict(_API_ERRORS)
            if operation.get("parameters") or "requestBody" in operation:
                errors.update(_API_INPUT_ERRORS)
            if "requestBody" in operation:
                errors.update(_API_BODY_ERRORS)
            responses = operation.setdefault("responses", {})
            for status, description in errors.items():
                responses.setdefault(status, {"description": description})
            if responses.get("422", {}).get("description") == "Validation Error":
                responses["422"]["description"] = _API_INPUT_ERRORS["422"]
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    response["content"] = body
                    if status in _API_ERROR_HEADERS:
                        response["headers"] = _API_ERROR_HEADERS[status]
    # FastAPI's own validation error bodies are never answered (see request_invalid).
    for name in ("HTTPValidationError", "ValidationError"):
        components["schemas"].pop(name, None)
    return schema


def _allowed_methods(request: Request) -> str | None:
    """Every method the JSON API takes at the request's path, as its OpenAPI document
    lists them (Starlette's 405 names only those of the first route it found there);
    None outside the document."""
    path = request.url.path
    for template, operations in request.app.openapi()["paths"].items():
        pattern, _, _ = compile_path(template)
        if pattern.match(path):
            methods = {method.upper() for method in operations}
            if "GET" in methods:
                methods.add("HEAD")
            return ", ".join(sorted(methods))
    return None


def _map_errors(app: FastAPI) -> None:
    """Every error a route may raise, as the answer a browser or a script gets."""

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        if is_api_request(request):
            return JSONResponse(
                {"error": API_SIGN_IN_MESSAGE},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/compose"
        return RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(ScopeMissing)
    async def scope_missing(request: Request, exc: ScopeMissing) -> Response:
        return _error_page(request, 403, "Not allowed for this token", str(exc))

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(request: Request, exc: CsrfRejected) -> Response:
        return _error_page(
            request,
            403,
            "This form has expired",
            "The form did not carry a valid security token, so nothing was changed. "
            "Go back, reload the page and try again.",
        )

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> Response:
        if is_api_request(request):
            return JSONResponse({"error": exc.summary, "errors": exc.errors}, status_code=422)
        return _error_page(request, 422, "Please check your input", str(exc))

    @app.exception_handler(Forbidden)
    async def forbidden(request: Request, exc: Forbidden) -> Response:
        return _error_page(request, 403, "Not allowed", str(exc))

    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound) -> Response:
        return _error_page(
            request, 404, "Not found", "There is nothing here, or it is not yours to see."
        )

    @app.exception_handler(Conflict)
    async def conflict(request: Request, exc: Conflict) -> Response:
        return _error_page(request, 409, "That cannot be done now", str(exc))

    @app.exception_handler(InvalidCursor)
    async def invalid_cursor(request: Request, exc: InvalidCursor) -> Response:
        return _error_page(
            request, 400, "Bad request", "invalid cursor: this page position was not ours"
        )

    @app.exception_handler(DomainError)
    async def refused(request: Request, exc: DomainError) -> Response:
        return _error_page(request, 400, "Bad request", str(exc) or "The request was refused.")

    @app.exception_handler(RequestValidationError)
    async def request_invalid(request: Request, exc: RequestValidationError) -> Response:
        if is_api_request(request):
            errors: dict[str, list[str]] = {}
            for error in exc.errors():
                loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
                errors.setdefault(".".join(loc) or "body", []).append(str(error.get("msg")))
            return JSONResponse({"error": "invalid input", "errors": errors}, status_code=422)
        return _error_page(request, 400, "Bad request", "The request could not be read.")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            response = _error_page(
                request, 404, "Not found", "There is nothing here, or it is not yours to see."
            )
        elif exc.status_code == 405:
            response = _error_page(
                request,
                405,
                "Method not allowed",
                "This address does not take that kind of request.",
            )
        else:
            detail = exc.detail if isinstance(exc.detail, str) else "The request failed."
            response = _error_page(request, exc.status_code, "Error", detail)
        if exc.headers:
            response.headers.update(exc.headers)
        if exc.status_code == 405:
            response.headers["allow"] = _allowed_methods(request) or response.headers["allow"]
        return response

    @app.exception_handler(SQLAlchemyError)
    async def database_error(request: Request, exc: SQLAlchemyError) -> Response:
        if not is_unreachable(exc):
            return await server_error(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        response = _error_page(request, 503, "Database unavailable", DATABASE_DOWN)
        response.headers["retry-after"] = "5"
        return response

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _error_page(
            request,
            500,
            "Something went wrong",
            "The server could not answer this request. It has been logged.",
        )
