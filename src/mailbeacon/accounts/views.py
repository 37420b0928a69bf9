"""Pages: sign-in, sign-out and Settings (Email sync, tracking options, API tokens)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import TrackingOptions
from mailbeacon.accounts.security import SESSION_COOKIE, SESSION_LIFETIME
from mailbeacon.accounts.service import (
    SERVER_CHANGED_NOTICE,
    ConnectionReport,
    InvalidInput,
    MailboxSaved,
    SignInRefused,
    SmtpParams,
    SmtpProbeBox,
    account_service,
)
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.models import MailboxConnection, Security, User
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
    safe_next,
)

router = APIRouter()

# Notices are chosen by key, never echoed from the query string.
NOTICES = {
    "saved": "Settings saved.",
    "demo": "You now send through the demo mailbox: everything you send lands in the "
    "Demo inbox, where you can read it as a recipient would.",
    "kept": "Your mailbox stays connected: the demo mailbox never replaces it.",
    "demo-off": "The demo mailbox is switched off on this server (MAILBEACON_DEMO_SMTP_PORT=0).",
    "tracking": "Tracking options saved.",
    "revoked": "The API token was revoked.",
    "signed-out": "You are signed out.",
}

SECURITY_CHOICES = [
    (Security.TLS.value, "Implicit TLS (usually port 465)"),
    (Security.STARTTLS.value, "STARTTLS (usually port 587)"),
    (Security.NONE.value, "None (this machine's loopback address only)"),
]


def cookies_secure(request: Request) -> bool:
    return provided(request, Settings).BASE_URL.lower().startswith("https://")


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


def _client_ip(request: Request) -> str | None:
    if provided(request, Settings).TRUST_FORWARDED_FOR:
        forwarded = request.headers.get("x-forwarded-for")
        if forwarded:
            # The rightmost entry is the one our proxy wrote; the ones before it
            # come from the client and could be made up to dodge the limit.
            return forwarded.split(",")[-1].strip()
    return request.client.host if request.client else None


def _sign_in_page(
    request: Request,
    *,
    email: str = "",
    next_url: str = "",
    error: str = "",
    status_code: int = 200,
    notice: str = "",
) -> HTMLResponse:
    token, fresh = anonymous_csrf_token(request)
    response = render(
        request,
        "sign_in.html",
        {"email": email, "next": next_url, "error": error, "notice": notice},
        status_code=status_code,
        csrf_token=token,
    )
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


@router.get("/sign-in", response_class=HTMLResponse)
def sign_in_form(
    request: Request, viewer: OptionalViewer, next: str = "", notice: str = ""
) -> Response:
    if viewer is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _sign_in_page(request, next_url=safe_next(next, ""), notice=NOTICES.get(notice, ""))


@router.post(
    "/sign-in",
    response_class=HTMLResponse,
    # Deferred: argon2 runs before the first write (see AccountService.sign_in).
    dependencies=[Depends(deferred_unit), Depends(anonymous_csrf_checked)],
)
def sign_in(
    request: Request,
    session: DbSession,
    email: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    try:
        signed = account_service.sign_in(session, email, password, _client_ip(request))
    except SignInRefused as exc:
        # Returned, not raised: the failed attempt must be committed to count.
        return _sign_in_page(
            request,
            email=email.strip()[:320],
            next_url=safe_next(next, ""),
            error=exc.message,
            status_code=401,
        )
    mailbox = account_service.get_mailbox(session, signed.user)
    response = RedirectResponse(safe_next(next), status_code=303)
    set_session_cookie(
        request, response, signed.session_token, int(SESSION_LIFETIME.total_seconds())
    )
    mark_browser_as_sender(
        request, None if mailbox is not None and mailbox.is_demo else signed.user.id
    )
    response.delete_cookie(ANON_CSRF_COOKIE, path="/")
    return response


@router.post("/sign-out")
def sign_out(request: Request, session: DbSession, viewer: CheckedViewer) -> Response:
    account_service.sign_out(session, request.cookies.get(SESSION_COOKIE))
    response = RedirectResponse("/sign-in?notice=signed-out", status_code=303)
    delete_session_cookie(request, response)
    mark_browser_as_sender(request, None)
    return response


@router.get("/settings")
def settings_home(viewer: SignedInViewer) -> Response:
    return RedirectResponse("/settings/email-sync", status_code=303)


def _mailbox_values(mailbox: MailboxConnection | None, user: User) -> dict[str, str]:
    if mailbox is None or mailbox.is_demo:
        return {
            "sender_name": user.display_name,
            "sender_address": user.email,
            "smtp_host": "",
            "smtp_port": "465",
            "smtp_security": Security.TLS.value,
            "smtp_username": user.email,
        }
    return {
        "sender_name": mailbox.sender_name,
        "sender_address": mailbox.sender_address,
        "smtp_host": mailbox.smtp_host,
        "smtp_port": str(mailbox.smtp_port),
        "smtp_security": str(mailbox.smtp_security),
        "smtp_username": mailbox.smtp_username,
    }


def _email_sync_page(
    request: Request,
    session: Session,
    user: User,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
    report: ConnectionReport | None = None,
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    mailbox = account_service.get_mailbox(session, user)
    context: dict[str, Any] = {
        "active": "settings",
        "section": "email-sync",
        "mailbox": mailbox,
        "values": values or _mailbox_values(mailbox, user),
        "errors": errors or {},
        "report": report,
        "notice": notice,
        "security_choices": SECURITY_CHOICES,
        "has_password": bool(mailbox and not mailbox.is_demo and mailbox.smtp_password_encrypted),
        "demo_port": provided(request, Settings).DEMO_SMTP_PORT,
    }
    return render(request, "settings/email_sync.html", context, status_code=status_code)


@router.get("/settings/email-sync", response_class=HTMLResponse)
def email_sync(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _email_sync_page(request, session, viewer.user, notice=NOTICES.get(notice, ""))


_MAILBOX_FIELDS = (
    "sender_name",
    "sender_address",
    "smtp_host",
    "smtp_port",
    "smtp_security",
    "smtp_username",
    "smtp_password",
)


async def _mailbox_form(request: Request) -> dict[str, str]:
    form = await request.form()
    return {name: str(form.get(name, "")) for name in _MAILBOX_FIELDS}


def _save_mailbox(
    request: Request, session: Session, user: User, values: dict[str, str]
) -> MailboxSaved:
    data = account_service.parse_mailbox_settings(values)
    return account_service.save_mailbox(session, user, data, provided(request, CredentialBox))


def _password_dropped_page(
    request: Request, session: Session, user: User, *, status_code: int
) -> HTMLResponse:
    """The settings were saved without their password: ask for it, on the field itself."""
    return _email_sync_page(
        request,
        session,
        user,
        errors={"smtp_password": [SERVER_CHANGED_NOTICE]},
        status_code=status_code,
    )


def _without_password(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k != "smtp_password"}


@router.post("/settings/email-sync", response_class=HTMLResponse)
async def save_email_sync(request: Request, session: DbSession, viewer: CheckedViewer) -> Response:
    values = await _mailbox_form(request)
    try:
        saved = await run_in_threadpool(_save_mailbox, request, session, viewer.user, values)
    except InvalidInput as exc:
        errors = exc.errors
        return await run_in_threadpool(
            lambda: _email_sync_page(
                request,
                session,
                viewer.user,
                values=_without_password(values),
                errors=errors,
                status_code=422,
            )
        )
    response: Response
    if saved.password_dropped:
        response = await run_in_threadpool(
            lambda: _password_dropped_page(request, session, viewer.user, status_code=200)
        )
    else:
        response = RedirectResponse("/settings/email-sync?notice=saved", status_code=303)
    mark_browser_as_sender(request, viewer.user.id)
    return response


def _save_for_test(
    request: Request, user_id: int, values: dict[str, str]
) -> tuple[MailboxSaved | None, SmtpParams | None]:
    """Save the form (if it was sent) in a unit of work of its own, and read what to test."""
    with provided(request, Database).unit_of_work() as session:
        user = session.get(User, user_id)
        assert user is not None
        saved = None
        if values["smtp_host"] or values["sender_address"]:
            saved = _save_mailbox(request, session, user, values)
            if saved.password_dropped:
                return saved, None
        return saved, account_service.smtp_params(session, user, provided(request, CredentialBox))


def _record_test(request: Request, user_id: int, report: ConnectionReport) -> None:
    with provided(request, Database).unit_of_work() as session:
        user = session.get(User, user_id)
        assert user is not None
        account_service.record_test(session, user, report)


@router.post(
    "/settings/email-sync/test",
    response_class=HTMLResponse,
    # The test talks to a mail server for up to its timeout: no transaction (and on
    # SQLite no write lock) may stay open across it, so it writes in units of its own.
    dependencies=[Depends(deferred_unit)],
)
async def test_email_sync(request: Request, session: DbSession, viewer: CheckedViewer) -> Response:
    """Save the form (if it was sent) and try it: connect, secure, sign in."""
    values = await _mailbox_form(request)
    user_id = viewer.user.id
    try:
        saved, params = await run_in_threadpool(_save_for_test, request, user_id, values)
    except InvalidInput as exc:
        errors = exc.errors
        return await run_in_threadpool(
            lambda: _email_sync_page(
                request,
                session,
                viewer.user,
                values=_without_password(values),
                errors=errors,
                status_code=422,
            )
        )
    if saved is not None:
        mark_browser_as_sender(request, viewer.user.id)
    if params is None:
        # Nothing to test with: the old password is never tried on a new server.
        return await run_in_threadpool(
            lambda: _password_dropped_page(request, session, viewer.user, status_code=422)
        )
    report = await account_service.test_connection(params, provided(request, SmtpProbeBox).probe)
    await run_in_threadpool(_record_test, request, user_id, report)
    await run_in_threadpool(session.expire_all)
    return await run_in_threadpool(
        lambda: _email_sync_page(
            request, session, viewer.user, report=report, status_code=200 if report.ok else 422
        )
    )


@router.post("/settings/email-sync/demo")
def use_demo_mailbox(request: Request, session: DbSession, viewer: CheckedViewer) -> Response:
    port = provided(request, Settings).DEMO_SMTP_PORT
    if not port:
        return RedirectResponse("/settings/email-sync?notice=demo-off", status_code=303)
    mailbox = account_service.use_demo_mailbox(session, viewer.user, port=port)
    if not mailbox.is_demo:
        # A connected mailbox is never replaced by the demo one.
        return RedirectResponse("/settings/email-sync?notice=kept", status_code=303)
    response = RedirectResponse("/settings/email-sync?notice=demo", status_code=303)
    mark_browser_as_sender(request, None)
    return response


@router.post("/settings/tracking")
def save_tracking(
    session: DbSession,
    viewer: CheckedViewer,
    open_tracking_enabled: Annotated[bool, Form()] = False,
    link_tracking_enabled: Annotated[bool, Form()] = False,
    notify_tracking: Annotated[bool, Form()] = False,
) -> Response:
    account_service.save_tracking_options(
        session,
        viewer.user,
        TrackingOptions(
            open_tracking_enabled=open_tracking_enabled,
            link_tracking_enabled=link_tracking_enabled,
            notify_tracking=notify_tracking,
        ),
    )
    return RedirectResponse("/settings/email-sync?notice=tracking#tracking", status_code=303)


def _api_tokens_page(
    request: Request,
    session: Session,
    user: User,
    *,
    new_token: str = "",
    errors: dict[str, list[str]] | None = None,
    name: str = "",
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "settings/api_tokens.html",
        {
            "active": "settings",
            "section": "api-tokens",
            "tokens": account_service.list_api_tokens(session, user),
            "new_token": new_token,
            "errors": errors or {},
            "name": name,
            "notice": notice,
        },
        status_code=status_code,
    )


@router.get("/settings/api-tokens", response_class=HTMLResponse)
def api_tokens(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _api_tokens_page(request, session, viewer.user, notice=NOTICES.get(notice, ""))


@router.post("/settings/api-tokens", response_class=HTMLResponse)
def create_api_token(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    name: Annotated[str, Form()] = "",
) -> Response:
    try:
        _, plain = account_service.create_api_token(session, viewer.user, name)
    except InvalidInput as exc:
        return _api_tokens_page(
            request, session, viewer.user, errors=exc.errors, name=name, status_code=422
        )
    # Shown once, on this response; it is not stored anywhere in plain text.
    return _api_tokens_page(request, session, viewer.user, new_token=plain)


@router.post("/settings/api-tokens/{token_id}/revoke")
def revoke_api_token(session: DbSession, viewer: CheckedViewer, token_id: int) -> Response:
    account_service.revoke_api_token(session, viewer.user, token_id)
    return RedirectResponse("/settings/api-tokens?notice=revoked", status_code=303)
