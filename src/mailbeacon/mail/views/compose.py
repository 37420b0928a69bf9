"""Pages: compose and send.

The form posts here; planning writes the message, its copies and an outbox
entry in the request's unit of work, and the outbox worker is woken once that
commits. The page then goes to the email's detail, where delivery shows up.

The form is read by the route itself, with limits of its own: Starlette's form
parsers refuse a field over 1 MB by default, far below what a message may be,
and answered a bare error page that lost the draft. Whatever goes wrong, the
answer is this page, with the reason at the field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from mailbeacon.config import Settings
from mailbeacon.kit.validation import field_errors
from mailbeacon.mail import repository
from mailbeacon.mail.ports import ConsentPolicy, Instrumenter
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import BODY_LIMIT_TEXT, InvalidDraft, NoMailbox, message_service
from mailbeacon.models import User
from mailbeacon.web.deps import (
    DbSession,
    SignedInViewer,
    Viewer,
    csrf_checked,
    provided,
    render,
)

router = APIRouter()

# Compose shows the author's own draft, images included, and needs its small
# editor script; inline styles are what rich text is made of.
COMPOSE_CSP = (
    "default-src 'self'; img-src * data: blob:; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
COMPOSE_LABELS = {
    "to": "To",
    "cc": "Cc",
    "bcc": "Bcc",
    "subject": "Subject",
    "body": "Message",
    "body_html": "Message",
    "body_text": "Message",
    "open_tracking": "Enable open tracking",
    "link_tracking": "Enable link tracking",
    "sender_name": "From",
}
_TEXT_FIELDS = ("to", "cc", "bcc", "subject", "body_format", "body_html", "body_text")
# The form has a dozen fields and no files; anything beyond is not this form.
_MAX_FIELDS = 50
_TRUE = frozenset({"true", "on", "1", "yes"})


def _compose_page(
    request: Request,
    session: Session,
    user: User,
    values: dict[str, Any],
    *,
    errors: dict[str, list[str]] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    mailbox = repository.mailbox_for_user(session, user.id)
    switches = message_service.compose_switches(user)
    return render(
        request,
        "mail/compose.html",
        {
            "active": "compose",
            "values": values,
            "errors": errors or {},
            "summary_errors": {k: v for k, v in (errors or {}).items() if k != "mailbox"},
            "labels": COMPOSE_LABELS,
            "mailbox": mailbox,
            "switches": switches,
            "body_limit": BODY_LIMIT_TEXT,
        },
        status_code=status_code,
        headers={"content-security-policy": COMPOSE_CSP},
    )


@router.get("/compose", response_class=HTMLResponse)
def compose(request: Request, session: DbSession, viewer: SignedInViewer) -> Response:
    switches = message_service.compose_switches(viewer.user)
    values = {
        "to": "",
        "cc": "",
        "bcc": "",
        "subject": "",
        "body_format": "html",
        "body_html": "",
        "body_text": "",
        "open_tracking": switches.open_tracking,
        "link_tracking": switches.link_tracking,
    }
    return _compose_page(request, session, viewer.user, values)


@dataclass(frozen=True, slots=True)
class ComposeForm:
    """The compose form as posted, or why it could not be read (and with what status)."""

    fields: dict[str, str] = field(default_factory=dict)
    problem: str = ""
    status_code: int = 200


async def read_compose_form(request: Request) -> ComposeForm:
    """Read the form before anything else (no unit of work is open, so no write lock is
    held while a large body arrives), with parts as large as the request may be.

    The request itself is limited to ``MAX_SEND_REQUEST_BYTES`` by the application
    (``web.limits.BodyLimit``), which answers 413 before or while the body is read;
    a message's own limit (``BODY_LIMIT_TEXT``) is the service's, at the field.
    """
    limit = provided(request, Settings).MAX_SEND_REQUEST_BYTES
    try:
        form = await request.form(max_part_size=limit, max_files=0, max_fields=_MAX_FIELDS)
    except (HTTPException, MultiPartException):
        return ComposeForm(
            problem=(
                "The form could not be read (it held files or too many fields, or was cut "
                "short), so the draft could not be kept. Please write it again."
            ),
            status_code=400,
        )
    values = {name: value for name, value in form.multi_items() if isinstance(value, str)}
    return ComposeForm(fields=values)


ComposeFormDep = Annotated[ComposeForm, Depends(read_compose_form)]


async def _viewer_of_form(request: Request, form: ComposeFormDep, viewer: SignedInViewer) -> Viewer:
    """The CSRF check, on the form already read. A form that could not be read changes
    nothing (the answer is the compose page again), so it is not checked."""
    if form.problem:
        return viewer
    return await csrf_checked(request, viewer)


@router.post("/compose", response_class=HTMLResponse)
def send(
    request: Request,
    # First: the form is read before the unit of work begins.
    form: ComposeFormDep,
    session: DbSession,
    viewer: Annotated[Viewer, Depends(_viewer_of_form)],
) -> Response:
    """Plan the send and answer at once; the outbox worker delivers in the background."""
    user = viewer.user
    switches = message_service.compose_switches(user)
    posted = form.fields
    to, cc, bcc, subject, body_format, body_html, body_text = (
        posted.get(name, "") for name in _TEXT_FIELDS
    )
    # An option switched off in Settings is not offered, and not honoured if forged.
    open_tracking = posted.get("open_tracking", "").lower() in _TRUE and switches.offer_open
    link_tracking = posted.get("link_tracking", "").lower() in _TRUE and switches.offer_link
    body_format = "text" if body_format == "text" else "html"
    values = {
        "to": to,
        "cc": cc,
        "bcc": bcc,
        "subject": subject,
        "body_format": body_format,
        "body_html": body_html,
        "body_text": body_text,
        "open_tracking": open_tracking,
        "link_tracking": link_tracking,
    }
    if form.problem:
        return _compose_page(
            request,
            session,
            user,
            # Nothing was read: the switches as they start on an empty draft.
            {
                **values,
                "open_tracking": switches.open_tracking,
                "link_tracking": switches.link_tracking,
            },
            errors={"body": [form.problem]},
            status_code=form.status_code,
        )
    try:
        draft = Draft(
            to=[to],
            cc=[cc],
            bcc=[bcc],
            subject=subject,
            body_html=body_html if body_format == "html" else None,
            body_text=body_text if body_format == "text" else None,
            open_tracking=open_tracking,
            link_tracking=link_tracking,
        )
        message = message_service.plan_send(
            session,
            user,
            draft,
            instrumenter=provided(request, Instrumenter),
            consent=provided(request, ConsentPolicy),
        )
    except (InvalidDraft, ValidationError, NoMailbox) as exc:
        # Planning refuses before it writes anything; the form comes back filled in.
        if isinstance(exc, InvalidDraft):
            errors = exc.errors
        elif isinstance(exc, ValidationError):
            errors = field_errors(exc)
        else:
            errors = {
                "mailbox": [
                    "No mailbox is connected: connect one in Settings > Email "
                    "sync (or use the demo mailbox), then send again."
                ]
            }
        return _compose_page(request, session, user, values, errors=errors, status_code=422)
    return RedirectResponse(f"/mail/{message.id}?notice=queued", status_code=303)
