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
    IMAP_SERVER_CHANGED_NOTICE,
    SERVER_CHANGED_NOTICE,
    ConnectionReport,
    ImapParams,
    ImapProbeBox,
    ImapReport,
    InvalidInput,
    MailboxSaved,
    SignInRefused,
    SmtpParams,
    SmtpProbeBox,
    TooManyAttempts,
    account_service,
)
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.net import client_address
from mailbeacon.kit.netpolicy import mail_server_policy
from mailbeacon.models import MailboxConnection, Security, User
from mailbeacon.models.account import TokenScope
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

# Pages, not the JSON API: they stay out of its OpenAPI document.
router = APIRouter(include_in_schema=False)

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
    "exists": "An account exists already: sign in.",
    "welcome": "Welcome! To try mailbeacon at once, use the demo mailbox below: what you "
    "send lands in the Demo inbox, where you open it as a recipient would. Connect your "
    "own mailbox whenever you like.",
}

SECURITY_CHOICES = [
    (Security.TLS.value, "Implicit TLS (usually port 465)"),
    (Security.STARTTLS.value, "STARTTLS (usually port 587)"),
    (Security.NONE.value, "None (this machine's loopback address only)"),
]
IMAP_SECURITY_CHOICES = [
    (Security.TLS.value, "Implicit TLS (usually port 993)"),
    (Security.STARTTLS.value, "STARTTLS (usually port 143)"),
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
    """Who is signing in, read as the tracking edge reads it (``kit.net.client_address``)."""
    return client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        provided(request, Settings).proxy_hops,
    )


def _sign_in_page(
    request: Request,
    *,
    email: str = "",
    next_url: str = "",
    error: str = "",
    status_code: int = 200,
    notice: str = "",
    headers: dict[str, str] | None = None,
) -> HTMLResponse:
    token, fresh = anonymous_csrf_token(request)
    response = render(
        request,
        "sign_in.html",
        {"email": email, "next": next_url, "error": error, "notice": notice},
        status_code=status_code,
        csrf_token=token,
        headers=headers,
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
    request: Request, session: DbSession, viewer: OptionalViewer, next: str = "", notice: str = ""
) -> Response:
    if viewer is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    if not account_service.has_users(session):
        # A fresh server opens on its first account (accounts.joining).
        return RedirectResponse("/create-account", status_code=303)
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
        wait = exc.retry_after if isinstance(exc, TooManyAttempts) else None
        return _sign_in_page(
            request,
            email=email.strip()[:320],
            next_url=safe_next(next, ""),
            error=exc.message,
            status_code=401 if wait is None else 429,
            headers=None if wait is None else {"retry-after": str(wait)},
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
            **_IMAP_DEFAULTS,
        }
    return {
        "sender_name": mailbox.sender_name,
        "sender_address": mailbox.sender_address,
        "smtp_host": mailbox.smtp_host,
        "smtp_port": str(mailbox.smtp_port),
        "smtp_security": str(mailbox.smtp_security),
        "smtp_username": mailbox.smtp_username,
        "imap_host": mailbox.imap_host,
        "imap_port": str(mailbox.imap_port),
        "imap_security": str(mailbox.imap_security),
        "imap_username": mailbox.imap_username,
        "imap_same_password": "true" if mailbox.imap_same_password else "false",
        "sent_folder": mailbox.sent_folder,
        "replace_provider_copies": "true" if mailbox.replace_provider_copies else "false",
    }


_IMAP_DEFAULTS = {
    "imap_host": "",
    "imap_port": "993",
    "imap_security": Security.TLS.value,
    "imap_username": "",
    "imap_same_password": "true",
    "sent_folder": "",
    "replace_provider_copies": "true",
}


def _email_sync_page(
    request: Request,
    session: Session,
    user: User,
    *,
    values: dict[str, str] | None = None,
    errors: dict[str, list[str]] | None = None,
    report: ConnectionReport | None = None,
    imap_report: ImapReport | None = None,
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    mailbox = account_service.get_mailbox(session, user)
    real = mailbox is not None and not mailbox.is_demo
    context: dict[str, Any] = {
        "imap_report": imap_report,
        "sync_status": account_service.sync_status(session, mailbox),
        "has_imap_password": bool(real and mailbox and mailbox.imap_password_encrypted),
        "active": "settings",
        "section": "email-sync",
        "mailbox": mailbox,
        "values": values or _mailbox_values(mailbox, user),
        "errors": errors or {},
        "report": report,
        "notice": notice,
        "security_choices": SECURITY_CHOICES,
        "imap_security_choices": IMAP_SECURITY_CHOICES,
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
    "imap_host",
    "imap_port",
    "imap_security",
    "imap_username",
    "imap_password",
    "sent_folder",
)
_CHECKBOXES = ("imap_same_password", "replace_provider_copies")


async def _mailbox_form(request: Request) -> dict[str, str]:
    form = await request.form()
    values = {name: str(form.get(name, "")) for name in _MAILBOX_FIELDS}
    # A box left unticked sends nothing: only a form that has the IMAP section
    # (``imap_form``) says "off"; one without it keeps the defaults (on).
    with_imap = bool(form.get("imap_form"))
    for name in _CHECKBOXES:
        values[name] = "true" if form.get(name) or not with_imap else "false"
    return values


def _save_mailbox(
    request: Request, session: Session, user: User, values: dict[str, str]
) -> MailboxSaved:
    policy = mail_server_policy(provided(request, Settings))
    data = account_service.parse_mailbox_settings(values, policy)
    return account_service.save_mailbox(session, user, data, provided(request, CredentialBox))


def _password_dropped_page(
    request: Request, session: Session, user: User, *, status_code: int, imap: bool = False
) -> HTMLResponse:
    """The settings were saved without their password: ask for it, on the field itself."""
    errors = (
        {"imap_password": [IMAP_SERVER_CHANGED_NOTICE]}
        if imap
        else {"smtp_password": [SERVER_CHANGED_NOTICE]}
    )
    return _email_sync_page(request, session, user, errors=errors, status_code=status_code)


def _without_password(values: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in values.items() if k not in ("smtp_password", "imap_password")}


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
    if saved.password_dropped or saved.imap_password_dropped:
        response = await run_in_threadpool(
            lambda: _password_dropped_page(
                request,
                session,
                viewer.user,
                status_code=200,
                imap=not saved.password_dropped,
            )
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
    imap_params = await run_in_threadpool(_imap_params_of, request, user_id)
    imap_report = None
    if imap_params is not None:
        imap_report = await account_service.test_imap(
            imap_params, provided(request, ImapProbeBox).probe
        )
        await run_in_threadpool(_record_imap_test, request, user_id, imap_report)
    await run_in_threadpool(session.expire_all)
    ok = report.ok and (imap_report is None or imap_report.ok)
    dropped = saved is not None and saved.imap_password_dropped
    return await run_in_threadpool(
        lambda: _email_sync_page(
            request,
            session,
            viewer.user,
            report=report,
            imap_report=imap_report,
            errors={"imap_password": [IMAP_SERVER_CHANGED_NOTICE]} if dropped else None,
            status_code=200 if ok and not dropped else 422,
        )
    )


def _imap_params_of(request: Request, user_id: int) -> ImapParams | None:
    with provided(request, Database).unit_of_work(immediate=False) as session:
        user = session.get(User, user_id)
        assert user is not None
        saved = account_service.get_mailbox(session, user)
        if saved is not None and not saved.imap_same_password and not saved.imap_password_encrypted:
            return None  # no IMAP password (dropped, or never given): nothing to try
        return account_service.imap_params(session, user, provided(request, CredentialBox))


def _record_imap_test(request: Request, user_id: int, report: ImapReport) -> None:
    with provided(request, Database).unit_of_work() as session:
        user = session.get(User, user_id)
        assert user is not None
        account_service.record_imap_test(session, user, report)


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


# What each scope allows, as the API tokens page explains it.
SCOPE_CHOICES = [
    (TokenScope.READ.value, "Read", "email, its delivery and tracking, notifications"),
    (TokenScope.SEND.value, "Send", "send email and retry a copy"),
    (TokenScope.ADMIN.value, "Administer", "change Settings, API tokens and notifications"),
]
DEFAULT_SCOPES = [TokenScope.READ.value, TokenScope.SEND.value]
EXPIRY_CHOICES = [("30", "30 days"), ("90", "90 days"), ("365", "a year"), ("", "never")]
DEFAULT_EXPIRY = "90"


def _api_tokens_page(
    request: Request,
    session: Session,
    user: User,
    *,
    new_token: str = "",
    errors: dict[str, list[str]] | None = None,
    name: str = "",
    scopes: list[str] | None = None,
    expires_in_days: str = DEFAULT_EXPIRY,
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
            "scopes": DEFAULT_SCOPES if scopes is None else scopes,
            "expires_in_days": expires_in_days,
            "scope_choices": SCOPE_CHOICES,
            "expiry_choices": EXPIRY_CHOICES,
            "now": utcnow(),
            "notice": notice,
        },
        status_code=status_code,
    )


@router.get("/settings/api-tokens", response_class=HTMLResponse)
def api_tokens(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _api_tokens_page(request, session, viewer.user, notice=NOTICES.get(notice, ""))


def _days(value: str) -> int | None:
    """The expiry field: empty for never, else a number of days."""
    value = value.strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 6:
        raise InvalidInput({"expires_in_days": ["Choose how many days the token works."]})
    return int(value)


@router.post("/settings/api-tokens", response_class=HTMLResponse)
def create_api_token(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    name: Annotated[str, Form()] = "",
    scopes: Annotated[list[str] | None, Form()] = None,
    scopes_offered: Annotated[bool, Form()] = False,
    expires_in_days: Annotated[str, Form()] = "",
) -> Response:
    # The page's form says it offered the choice: then no box ticked is a mistake.
    # A post without the choice (a script of an earlier version) gets the defaults.
    if scopes is None and not scopes_offered:
        scopes = DEFAULT_SCOPES
    try:
        _, plain = account_service.create_api_token(
            session, viewer.user, name, scopes or [], _days(expires_in_days)
        )
    except InvalidInput as exc:
        return _api_tokens_page(
            request,
            session,
            viewer.user,
            errors=exc.errors,
            name=name,
            scopes=scopes or [],
            expires_in_days=expires_in_days,
            status_code=422,
        )
    # Shown once, on this response; it is not stored anywhere in plain text.
    return _api_tokens_page(request, session, viewer.user, new_token=plain)


@router.post("/settings/api-tokens/{token_id}/revoke")
def revoke_api_token(session: DbSession, viewer: CheckedViewer, token_id: int) -> Response:
    account_service.revoke_api_token(session, viewer.user, token_id)
    return RedirectResponse("/settings/api-tokens?notice=revoked", status_code=303)
