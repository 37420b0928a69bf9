"""How a request is signed in: an API token (`Authorization: Bearer`) or the session cookie.

The application installs :func:`resolve_viewer` as the web kit's viewer resolver.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi import Request
from sqlalchemy.orm import Session

from mailbeacon.accounts.security import SESSION_COOKIE
from mailbeacon.accounts.service import account_service
from mailbeacon.db import Database
from mailbeacon.web.deps import ALL_SCOPES, Viewer, provided, unit_writes


def resolve_viewer(request: Request, session: Session, *, touch: bool = True) -> Viewer | None:
    """The user behind the request with what they may do, or None.

    An API token may do what its scopes say; a browser session may do everything.

    Refreshing "last used" happens at most hourly (never with ``touch=False``). A
    request that may write does it in its own unit of work; a page view (a
    read-only unit of work) does it in a short one of its own, so that reading
    never waits for the write lock except in the rare request that touches.
    """
    authorization = request.headers.get("authorization")
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "bearer":
            return None
        found_token = account_service.api_token_user(session, value.strip())
        if found_token is None:
            return None
        user, token = found_token
        if touch and account_service.token_needs_touch(token):
            _touch(request, session, lambda s: account_service.touch_api_token(s, token.id))
        return Viewer(
            user=user,
            csrf_secret=None,
            email=user.email,
            name=user.display_name,
            scopes=frozenset(token.scope_set),
            time_zone=user.time_zone,
        )
    found = account_service.session_user(session, request.cookies.get(SESSION_COOKIE))
    if found is None:
        return None
    user, record = found
    if touch and account_service.session_needs_touch(record):
        _touch(request, session, lambda s: account_service.touch_session(s, record.id))
    return Viewer(
        user=user,
        csrf_secret=record.csrf_secret,
        email=user.email,
        name=user.display_name,
        scopes=ALL_SCOPES,
        time_zone=user.time_zone,
    )


def _touch(request: Request, session: Session, write: Callable[[Session], None]) -> None:
    # A unit that holds the write lock already would wait on a second one: use it.
    if unit_writes(request):
        write(session)
        return
    with provided(request, Database).unit_of_work() as own:
        write(own)
