"""The web application (pages and JSON API) beside the tracking edge."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import text
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailbeacon import __version__
from mailbeacon.accounts import endpoints as account_endpoints
from mailbeacon.accounts import views as account_views
from mailbeacon.accounts.service import AccountError, InvalidInput, NoMailboxConnection
from mailbeacon.mail import endpoints as mail_endpoints
from mailbeacon.mail import views as mail_views
from mailbeacon.notify import endpoints as notify_endpoints
from mailbeacon.notify import views as notify_views
from mailbeacon.runtime import Runtime
from mailbeacon.tracking import endpoints as tracking_endpoints
from mailbeacon.tracking import views as tracking_views
from mailbeacon.web.deps import (
    CsrfRejected,
    OptionalViewer,
    SignInRequired,
    is_api_request,
    render,
)

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"

# App pages show no email content, so they may load images from this site and
# data: URLs only. Pages that show email content (compose, the demo inbox)
# set their own policy.
DEFAULT_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds the headers every web response carries, unless a handler set its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
                if not static:
                    # Pages hold one person's data: never keep them in shared caches.
                    extra.append((b"cache-control", b"no-store"))
                headers.extend((k, v) for k, v in extra if k not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


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
    app.state.runtime = runtime
    app.add_middleware(SecurityHeaders)
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
    app.include_router(mail_views.router)
    app.include_router(account_endpoints.router)
    app.include_router(mail_endpoints.router)
    app.include_router(tracking_views.router)
    app.include_router(tracking_endpoints.router)
    app.include_router(notify_views.router)
    app.include_router(notify_endpoints.router)

    @app.exception_handler(SignInRequired)
    async def sign_in_required(request: Request, exc: SignInRequired) -> Response:
        if is_api_request(request):
            return JSONResponse(
                {"error": "Sign in, or send an API token as 'Authorization: Bearer <token>'."},
                status_code=401,
                headers={"www-authenticate": "Bearer"},
            )
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        if request.method != "GET":
            target = "/compose"
        return RedirectResponse(f"/sign-in?next={quote(target, safe='/')}", status_code=303)

    @app.exception_handler(CsrfRejected)
    async def csrf_rejected(request: Request, exc: CsrfRejected) -> Response:
        return _error_page(
            request,
            403,
            "This form has expired",
            "The form did not carry a valid security token, so nothing was changed. "
            "Go back, reload the page and try again.",
        )

    @app.exception_handler(NoMailboxConnection)
    async def no_mailbox(request: Request, exc: NoMailboxConnection) -> Response:
        return _error_page(
            request,
            409,
            "No mailbox connected",
            "Connect a mailbox first, in Settings > Email sync (or use the demo mailbox).",
        )

    @app.exception_handler(InvalidInput)
    async def invalid_input(request: Request, exc: InvalidInput) -> Response:
        if is_api_request(request):
            return JSONResponse({"error": "invalid input", "errors": exc.errors}, status_code=422)
        return _error_page(request, 422, "Please check your input", str(exc))

    @app.exception_handler(AccountError)
    async def account_error(request: Request, exc: AccountError) -> Response:
        return _error_page(request, 404, "Not found", "There is nothing here.")

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

    return app
