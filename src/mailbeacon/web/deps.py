"""Request-scoped helpers: the database session, who is signed in, CSRF, rendering."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request, Response
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy.orm import Session

from mailbeacon import __version__
from mailbeacon.accounts.security import (
    ANON_CSRF_COOKIE,
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    VIEWER_COOKIE_MAX_AGE,
    new_secret,
    tokens_match,
)
from mailbeacon.accounts.service import account_service
from mailbeacon.models import User
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.edge import VIEWER_COOKIE

templates = Jinja2Templates(directory=Path(__file__).resolve().parent / "templates")
templates.env.globals["version"] = __version__

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class SignInRequired(Exception):
    """No valid session cookie or API token came with a request that needs one."""


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

    @property
    def via_api_token(self) -> bool:
        return self.csrf_secret is None


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def commit_and_wake_outbox(request: Request, session: Session) -> None:
    """Commit a planned send now and tell this process's outbox worker to deliver it.

    Without this the copies would wait for the worker's next poll.
    """
    session.commit()
    outbox = getattr(request.app.state, "outbox", None)
    if outbox is not None:
        outbox.wake()


def is_api_request(request: Request) -> bool:
    return request.url.path.startswith("/api/")


def db_session(request: Request) -> Iterator[Session]:
    """One session per request, committed when the handler returns (before the response)."""
    with get_runtime(request).database.unit_of_work() as session:
        yield session


DbSession = Annotated[Session, Depends(db_session, scope="function")]


def current_viewer(request: Request, session: DbSession) -> Viewer | None:
    """The user behind the request: an `Authorization: Bearer` token or the session cookie."""
    authorization = request.headers.get("authorization")
    viewer: Viewer | None = None
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            user = account_service.api_token_user(session, value.strip())
            viewer = (
                None
                if user is None
                else Viewer(user=user, csrf_secret=None, email=user.email, name=user.display_name)
            )
    else:
        found = account_service.session_user(session, request.cookies.get(SESSION_COOKIE))
        if found is not None:
            user, record = found
            viewer = Viewer(
                user=user, csrf_secret=record.csrf_secret, email=user.email, name=user.display_name
            )
    request.state.viewer = viewer
    return viewer


OptionalViewer = Annotated[Viewer | None, Depends(current_viewer)]


def signed_in(viewer: OptionalViewer) -> Viewer:
    if viewer is None:
        raise SignInRequired()
    return viewer


SignedInViewer = Annotated[Viewer, Depends(signed_in)]


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
    if request.method in _SAFE_METHODS or viewer.via_api_token:
        return viewer
    if not tokens_match(viewer.csrf_secret, await submitted_csrf_token(request)):
        raise CsrfRejected()
    return viewer


CheckedViewer = Annotated[Viewer, Depends(csrf_checked)]


async def anonymous_csrf_checked(request: Request) -> None:
    """Forms shown before sign-in (double submit: the field must match the cookie)."""
    if not tokens_match(request.cookies.get(ANON_CSRF_COOKIE), await submitted_csrf_token(request)):
        raise CsrfRejected()


def cookies_secure(request: Request) -> bool:
    return get_runtime(request).settings.BASE_URL.lower().startswith("https://")


def set_session_cookie(request: Request, response: Response, token: str, max_age: int) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite="lax",
        secure=cookies_secure(request),
    )


def delete_session_cookie(request: Request, response: Response) -> None:
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="lax", secure=cookies_secure(request)
    )


def mark_browser_as_sender(request: Request, response: Response, user: User, *, mark: bool) -> None:
    """Set or clear the cookie that makes the tracking edge label this browser's hits `self`.

    It is cleared while the user sends through the demo mailbox: the demo
    inbox is read in this very browser standing in for the recipients, and a
    click there (a top-level navigation, which carries SameSite=Lax cookies)
    would otherwise count as the sender's own.
    """
    secure = cookies_secure(request)
    if mark:
        token = get_runtime(request).codec.mint_viewer_token(user.id)
        response.set_cookie(
            VIEWER_COOKIE,
            token,
            max_age=VIEWER_COOKIE_MAX_AGE,
            path="/t/",
            httponly=True,
            samesite="lax",
            secure=secure,
        )
    else:
        response.delete_cookie(
            VIEWER_COOKIE, path="/t/", httponly=True, samesite="lax", secure=secure
        )


def anonymous_csrf_token(request: Request) -> tuple[str, bool]:
    """The sign-in form's token, and whether the cookie holding it must be (re)set."""
    current = request.cookies.get(ANON_CSRF_COOKIE)
    if current and 20 <= len(current) <= 100:
        return current, False
    return new_secret(), True


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
    response: HTMLResponse = templates.TemplateResponse(
        request, name, values, status_code=status_code, headers=headers
    )
    return response
