"""Pages: the first account of a fresh server, invitations to join an organisation, and
Settings > Account (time zone, colleagues)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.security import SESSION_LIFETIME
from mailbeacon.accounts.service import (
    FirstUserExists,
    InvalidInput,
    InvitationInvalid,
    SignedIn,
    account_service,
    available_time_zones,
)
from mailbeacon.accounts.views import cookies_secure, set_session_cookie
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.validation import field_errors
from mailbeacon.models import User
from mailbeacon.web.deps import (
    ANON_CSRF_COOKIE,
    CheckedViewer,
    DbSession,
    OptionalViewer,
    SignedInViewer,
    anonymous_csrf_checked,
    anonymous_csrf_token,
    deferred_unit,
    mark_browser_as_sender,
    provided,
    render,
)

router = APIRouter(include_in_schema=False)

NOTICES = {
    "time-zone": "Time zone saved.",
    "withdrawn": "The invitation was withdrawn; its link no longer works.",
}


def _anonymous_form(
    request: Request, template: str, context: dict[str, Any], status_code: int = 200
) -> HTMLResponse:
    """A form shown before sign-in, with its double-submit CSRF token."""
    token, fresh = anonymous_csrf_token(request)
    response = render(request, template, context, status_code=status_code, csrf_token=token)
    if fresh:
        response.set_cookie(
            ANON_CSRF_COOKIE,
            token,
            path="/",
            httponly=True,
            samesite="lax",
            secure=cookies_secure(request),
        )
    return response


def _signed_in_response(request: Request, signed: SignedIn, target: str) -> Response:
    response = RedirectResponse(target, status_code=303)
    set_session_cookie(
        request, response, signed.session_token, int(SESSION_LIFETIME.total_seconds())
    )
    mark_browser_as_sender(request, signed.user.id)
    response.delete_cookie(ANON_CSRF_COOKIE, path="/")
    return response


# ------------------------------------------------------------------ the first account


@router.get("/create-account", response_class=HTMLResponse)
def create_account_form(request: Request, session: DbSession, viewer: OptionalViewer) -> Response:
    if viewer is not None:
        return RedirectResponse("/compose", status_code=303)
    if account_service.has_users(session):
        return RedirectResponse("/sign-in", status_code=303)
    return _anonymous_form(request, "create_account.html", {"values": {}, "errors": {}})


@router.post(
    "/create-account",
    response_class=HTMLResponse,
    # The password is rated and hashed before any unit of work writes (see below).
    dependencies=[Depends(deferred_unit), Depends(anonymous_csrf_checked)],
)
async def create_account(
    request: Request,
    name: Annotated[str, Form()] = "",
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    organisation: Annotated[str, Form()] = "",
) -> Response:
    values = {"name": name[:200], "email": email[:320], "organisation": organisation[:200]}

    def check() -> tuple[NewUser, str]:
        data = NewUser(email=email, name=name, password=password, organisation=organisation)
        return data, account_service.hash_new_password(data)

    def create(data: NewUser, hashed: str) -> SignedIn:
        # A unit of its own that holds SQLite's write lock from its start: racing
        # first-run requests queue there and the later ones find the user.
        with provided(request, Database).unit_of_work(immediate=True) as session:
            user = account_service.create_first_user(session, data, hashed)
            return account_service.start_session(session, user)

    try:
        data, hashed = await run_in_threadpool(check)
        signed = await run_in_threadpool(create, data, hashed)
    except ValidationError as exc:
        return _anonymous_form(
            request,
            "create_account.html",
            {"values": values, "errors": field_errors(exc)},
            status_code=422,
        )
    except InvalidInput as exc:
        return _anonymous_form(
            request,
            "create_account.html",
            {"values": values, "errors": exc.errors},
            status_code=422,
        )
    except FirstUserExists:
        return RedirectResponse("/sign-in?notice=exists", status_code=303)
    return _signed_in_response(request, signed, "/settings/email-sync?notice=welcome")


# ------------------------------------------------------------------ invitations


def _invite_page(
    request: Request,
    token: str,
    email: str,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    return _anonymous_form(
        request,
        "join.html",
        {"token": token, "email": email, "values": values or {}, "errors": errors or {}},
        status_code=status_code,
    )


def _invalid_invitation(request: Request) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": "Invitation not valid", "message": InvitationInvalid().args[0]},
        status_code=404,
    )


@router.get("/invite/{token}", response_class=HTMLResponse)
def invitation(request: Request, session: DbSession, token: str) -> Response:
    try:
        found = account_service.invitation_for(session, token)
    except InvitationInvalid:
        return _invalid_invitation(request)
    return _invite_page(request, token, found.email)


@router.post(
    "/invite/{token}",
    response_class=HTMLResponse,
    dependencies=[Depends(deferred_unit), Depends(anonymous_csrf_checked)],
)
async def accept_invitation(
    request: Request,
    token: str,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
) -> Response:
    database = provided(request, Database)

    def check() -> tuple[str, NewUser, str]:
        with database.unit_of_work(immediate=False) as session:
            email = account_service.invitation_for(session, token).email
        data = NewUser(email=email, name=name, password=password)
        return email, data, account_service.hash_new_password(data)

    def join(data: NewUser, hashed: str) -> SignedIn:
        with database.unit_of_work(immediate=True) as session:
            user = account_service.accept_invitation(session, token, data, hashed)
            return account_service.start_session(session, user)

    email = ""
    try:
        email, data, hashed = await run_in_threadpool(check)
        signed = await run_in_threadpool(join, data, hashed)
    except InvitationInvalid:
        return _invalid_invitation(request)
    except ValidationError as exc:
        return _invite_page(
            request,
            token,
            email,
            values={"name": name[:200]},
            errors=field_errors(exc),
            status_code=422,
        )
    except InvalidInput as exc:
        return _invite_page(
            request, token, email, values={"name": name[:200]}, errors=exc.errors, status_code=422
        )
    return _signed_in_response(request, signed, "/settings/email-sync?notice=welcome")


# ------------------------------------------------------------------ Settings > Account


def _account_page(
    request: Request,
    session: Session,
    user: User,
    *,
    errors: dict[str, list[str]] | None = None,
    invite_email: str = "",
    new_link: str = "",
    new_link_email: str = "",
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    context: dict[str, Any] = {
        "active": "settings",
        "section": "account",
        "time_zones": sorted(available_time_zones()),
        "errors": errors or {},
        "invite_email": invite_email,
        "new_link": new_link,
        "new_link_email": new_link_email,
        "invitations": account_service.pending_invitations(session, user) if user.is_admin else (),
        "organisation": account_service.organisation_name(session, user),
        "notice": notice,
    }
    return render(request, "settings/account.html", context, status_code=status_code)


@router.get("/settings/account", response_class=HTMLResponse)
def account_settings(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _account_page(request, session, viewer.user, notice=NOTICES.get(notice, ""))


@router.post("/settings/account/time-zone", response_class=HTMLResponse)
def save_time_zone(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    time_zone: Annotated[str, Form()] = "",
) -> Response:
    try:
        account_service.save_time_zone(session, viewer.user, time_zone)
    except InvalidInput as exc:
        return _account_page(request, session, viewer.user, errors=exc.errors, status_code=422)
    # The browser's own report (time.js) asks for no page back.
    if request.headers.get("x-requested-with") == "fetch":
        return Response(status_code=204)
    return RedirectResponse("/settings/account?notice=time-zone", status_code=303)


@router.post("/settings/account/invitations", response_class=HTMLResponse)
def create_invitation(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    email: Annotated[str, Form()] = "",
) -> Response:
    try:
        invitation, token = account_service.create_invitation(session, viewer.user, email)
    except InvalidInput as exc:
        return _account_page(
            request,
            session,
            viewer.user,
            errors=exc.errors,
            invite_email=email[:320],
            status_code=422,
        )
    link = provided(request, Settings).BASE_URL.rstrip("/") + f"/invite/{token}"
    # Shown once, on this response: only the token's hash is stored.
    return _account_page(
        request, session, viewer.user, new_link=link, new_link_email=invitation.email
    )


@router.post("/settings/account/invitations/{invitation_id}/withdraw")
def withdraw_invitation(session: DbSession, viewer: CheckedViewer, invitation_id: int) -> Response:
    account_service.revoke_invitation(session, viewer.user, invitation_id)
    return RedirectResponse("/settings/account?notice=withdrawn", status_code=303)
