"""Request-scoped helpers every domain's pages and JSON API use.

This package knows no domain: the domains' views and endpoints build on it, and
the application (``mailbeacon.app``) fills in what it needs at start-up: the
objects it provides (:func:`provided`) and how a request is signed in
(:class:`ViewerResolver`, implemented by the accounts domain).

The unit of work: one session per request, committed when the handler returns
and rolled back when it raises; routes never commit or roll back themselves.
Requests with a safe method (GET, HEAD, OPTIONS) get a read-only unit, the
others a writing one (on SQLite it holds the write lock from its start, see
``db.py``).
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Protocol, TypeVar
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from sqlalchemy.orm import Session

from mailbeacon import __version__
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.frames import estimated_frame_height
from mailbeacon.kit.local_time import describe_date, describe_time, zone_named
from mailbeacon.models import User
from mailbeacon.models.account import TokenScope

T = TypeVar("T")

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.globals["version"] = __version__

# The zone of the page being rendered: macros imported into a template (``at`` in
# mail/_tracking.html) do not see its context, so ``local_time`` reads it from here.
_rendering_zone: ContextVar[str] = ContextVar("mailbeacon_rendering_zone", default="")


def local_time(value: datetime | None) -> Markup:
    """A time in the viewer's zone, relative where that reads better, exact on hover;
    ``static/time.js`` keeps it current."""
    if value is None:
        return Markup("—")
    shown = describe_time(value, zone_named(_rendering_zone.get()), utcnow())
    return Markup('<time datetime="{}" title="{}" data-local>{}</time>').format(
        shown.iso_utc, shown.exact, shown.text
    )


def local_date(value: datetime) -> Markup:
    """The day of a time in the viewer's zone, exact on hover (never relative)."""
    shown = describe_date(value, zone_named(_rendering_zone.get()))
    return Markup('<time datetime="{}" title="{}">{}</time>').format(
        shown.iso_utc, shown.exact, shown.text
    )


templates.env.globals["local_time"] = local_time
templates.env.globals["local_date"] = local_date
templates.env.globals["frame_height"] = estimated_frame_height

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
# Anonymous forms (sign-in) carry a double-submit token tied to this cookie.
ANON_CSRF_COOKIE = "mb_csrf"


API_SIGN_IN_MESSAGE = "Sign in, or send an API token as 'Authorization: Bearer <token>'."


class SignInRequired(Exception):
    """No valid session cookie or API token came with a request that needs one."""


class ScopeMissing(Exception):
    """The request's API token was not minted with the scope its route needs."""

    def __init__(self, scope: TokenScope) -> None:
        super().__init__(f"This API token does not have the {scope.value!r} scope.")
        self.scope = scope


class CsrfRejected(Exception):
    """A state-changing request from a cookie session without the right CSRF token."""


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in user of this request and how they proved it."""

    user: User
    # None when the request came with an API token: browsers never attach those
    # by themselves, so such requests need no CSRF token.
    csrf_secret: str | None
    # What the page header shows, read once: error pages render after the
    # request's transaction was rolled back, when `user` can no longer load.
    email: str = ""
    name: str = ""
    # What the request may do: an API token's scopes; a browser session has them all.
    scopes: frozenset[str] = field(default_factory=frozenset)
    # The IANA zone pages show times in ("" until the browser has said: UTC).
    time_zone: str = ""

    @property
    def via_api_token(self) -> bool:
        return self.csrf_secret is None


class ViewerResolver(Protocol):
    """Who is behind a request (an API token or a session cookie), if anyone.

    With ``touch=False`` nothing is written (no "last used" refresh): for checks
    made before the request's own unit of work.
    """

    def __call__(
        self, request: Request, session: Session, *, touch: bool = True
    ) -> Viewer | None: ...


ALL_SCOPES: frozenset[str] = frozenset(TokenScope)


class TokenPolicy:
    """The scope an API token needs for each route: ``read`` to read (GET, HEAD), ``admin``
    for any other method, unless the route is declared to need another.

    The application declares the exceptions (sending needs ``send``); a route nobody
    thought about falls to ``admin``, so a new way of changing something is never
    open to a token minted to read or to send.
    """

    def __init__(self, declared: Mapping[tuple[str, str], TokenScope] | None = None) -> None:
        self.declared = dict(declared or {})

    def required(self, method: str, path: str) -> TokenScope:
        """The scope for a route, by its method and path template (``/api/mail/{message_id}``)."""
        found = self.declared.get((method, path))
        if found is not None:
            return found
        return TokenScope.READ if method in SAFE_METHODS else TokenScope.ADMIN

    def document(self, schema: dict[str, Any]) -> dict[str, Any]:
        """Say in each operation of the JSON API's OpenAPI document which scope a token
        needs for it (in its description, and as ``x-token-scope``)."""
        for path, operations in schema.get("paths", {}).items():
            if not path.startswith("/api/"):
                continue  # /healthz: anyone may ask
            for method, operation in operations.items():
                if not isinstance(operation, dict) or "x-token-scope" in operation:
                    continue
                scope = self.required(method.upper(), path)
                note = (
                    f"API token scope: `{scope.value}` "
                    "(a browser session may do everything its user may)."
                )
                described = operation.get("description", "").rstrip()
                operation["description"] = f"{described}\n\n{note}" if described else note
                operation["x-token-scope"] = scope.value
        return schema


def required_scope(request: Request) -> TokenScope:
    """The scope the request's route needs from an API token."""
    policy: TokenPolicy = getattr(request.app.state, "token_policy", None) or TokenPolicy()
    route = request.scope.get("route")
    path = getattr(route, "path", None) or request.url.path
    return policy.required(request.method, path)


# ------------------------------------------------------------------ what the app provides


def provided(request: Request, kind: Callable[..., T]) -> T:
    """The object the application registered at start-up for ``kind`` (a class, or a
    protocol a domain declares for what it needs from elsewhere)."""
    services: Mapping[object, Any] = request.app.state.services
    found: T = services[kind]
    return found


def is_api_request(request: Request) -> bool:
    return request.url.path.startswith("/api/")


# ------------------------------------------------------------------ the unit of work


def deferred_unit(request: Request) -> None:
    """Route marker (list it in the route's ``dependencies``): this request's unit of work
    begins without the write lock, because the route does slow work (a password hash,
    a network round trip) before it writes. Such a route must either make its first
    statement in the unit a write, or write in units of work of its own; otherwise a
    read followed by a write could find SQLite's snapshot stale."""
    request.state.deferred_unit = True


def writing_unit(request: Request) -> None:
    """Route marker (list it in the route's ``dependencies``): this GET writes (an audited
    view records who looked), so its unit of work begins with the write lock like any
    other write: a read snapshot upgraded to a write fails at once on SQLite when another
    writer committed meanwhile."""
    request.state.writing_unit = True


def unit_writes(request: Request) -> bool:
    """Whether the request's unit of work may write: any method but the safe ones, and
    a safe one marked ``writing_unit``. What else writes for the request (refreshing
    "last used") goes into that unit then, and into a short one of its own otherwise."""
    return request.method not in SAFE_METHODS or getattr(request.state, "writing_unit", False)


def db_session(request: Request) -> Iterator[Session]:
    """One unit of work per request: committed when the handler returns (before the
    response goes out), rolled back when it raises."""
    database = provided(request, Database)
    immediate = unit_writes(request) and not getattr(request.state, "deferred_unit", False)
    with database.unit_of_work(immediate=immediate) as session:
        yield session


DbSession = Annotated[Session, Depends(db_session, scope="function")]


# ------------------------------------------------------------------ who is asking


def current_viewer(request: Request, session: DbSession) -> Viewer | None:
    """The user behind the request, as the application's resolver finds them."""
    resolve: ViewerResolver = request.app.state.resolve_viewer
    viewer = resolve(request, session)
    request.state.viewer = viewer
    return viewer


OptionalViewer = Annotated[Viewer | None, Depends(current_viewer)]


def signed_in(request: Request, viewer: OptionalViewer) -> Viewer:
    """The viewer, who must be signed in and (with an API token) hold the route's scope.

    The one place scopes are enforced: every route that needs a user goes through here.
    """
    if viewer is None:
        raise SignInRequired()
    needed = required_scope(request)
    if needed not in viewer.scopes:
        raise ScopeMissing(needed)
    return viewer


SignedInViewer = Annotated[Viewer, Depends(signed_in)]


def new_csrf_secret() -> str:
    return secrets.token_urlsafe(32)


def tokens_match(expected: str | None, given: str | None) -> bool:
    """Constant-time comparison; a missing side never matches."""
    if not expected or not given:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


async def submitted_csrf_token(request: Request) -> str | None:
    """The token a request carries: the X-CSRF-Token header or the form field."""
    header = request.headers.get(CSRF_HEADER)
    if header:
        return header
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("application/x-www-form-urlencoded", "multipart/form-data")):
        value = (await request.form()).get(CSRF_FIELD)
        return value if isinstance(value, str) else None
    return None


async def csrf_checked(request: Request, viewer: SignedInViewer) -> Viewer:
    """Every state-changing request of a cookie session must carry its CSRF token."""
    if request.method in SAFE_METHODS or viewer.via_api_token:
        return viewer
    if not tokens_match(viewer.csrf_secret, await submitted_csrf_token(request)):
        raise CsrfRejected()
    return viewer


CheckedViewer = Annotated[Viewer, Depends(csrf_checked)]


async def anonymous_csrf_checked(request: Request) -> None:
    """Forms shown before sign-in (double submit: the field must match the cookie)."""
    if not tokens_match(request.cookies.get(ANON_CSRF_COOKIE), await submitted_csrf_token(request)):
        raise CsrfRejected()


def anonymous_csrf_token(request: Request) -> tuple[str, bool]:
    """The sign-in form's token, and whether the cookie holding it must be (re)set."""
    current = request.cookies.get(ANON_CSRF_COOKIE)
    if current and 20 <= len(current) <= 100:
        return current, False
    return new_csrf_secret(), True


# ------------------------------------------------------------------ the sender's browser


def mark_browser_as_sender(request: Request, sender_id: int | None) -> None:
    """Say whether this browser is a sender's own: the application then sets (or, with
    None, clears) the cookie that makes the tracking edge label its hits ``self``.

    It is cleared while the user sends through the demo mailbox: the demo inbox
    is read in this very browser standing in for the recipients, and a click
    there (a top-level navigation, which carries SameSite=Lax cookies) would
    otherwise count as the sender's own.
    """
    request.state.sender_cookie = (sender_id,)


def safe_next(target: str | None, default: str = "/compose") -> str:
    """Only ever redirect back into this site after sign-in (no open redirect)."""
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or any(ord(ch) < 0x20 for ch in target):
        return default
    return target


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any] | None = None,
    *,
    status_code: int = 200,
    csrf_token: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> HTMLResponse:
    """Render a page with what every page needs: the viewer, the CSRF token, the nav."""
    viewer: Viewer | None = getattr(request.state, "viewer", None)
    values: dict[str, Any] = {
        "viewer": viewer,
        "user": viewer.user if viewer else None,
        "csrf_token": csrf_token or (viewer.csrf_secret if viewer else None) or "",
        "csrf_field": CSRF_FIELD,
        "active": "",
    }
    values.update(context or {})
    zone = _rendering_zone.set(viewer.time_zone if viewer else "")
    try:
        response: HTMLResponse = templates.TemplateResponse(
            request, name, values, status_code=status_code, headers=headers
        )
    finally:
        _rendering_zone.reset(zone)
    return response
