"""Pages: compose and send.

The form posts here; planning writes the message, its copies and an outbox
entry in the request's unit of work, and the outbox worker is woken once that
commits. The page then goes to the email's detail, where delivery shows up.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mailbeacon.kit.validation import field_errors
from mailbeacon.mail import repository
from mailbeacon.mail.ports import Instrumenter
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import InvalidDraft, NoMailbox, message_service
from mailbeacon.models import User
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided, render

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
}


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


@router.post("/compose", response_class=HTMLResponse)
def send(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    to: Annotated[str, Form()] = "",
    cc: Annotated[str, Form()] = "",
    bcc: Annotated[str, Form()] = "",
    subject: Annotated[str, Form()] = "",
    body_format: Annotated[str, Form()] = "html",
    body_html: Annotated[str, Form()] = "",
    body_text: Annotated[str, Form()] = "",
    open_tracking: Annotated[bool, Form()] = False,
    link_tracking: Annotated[bool, Form()] = False,
) -> Response:
    """Plan the send and answer at once; the outbox worker delivers in the background."""
    user = viewer.user
    switches = message_service.compose_switches(user)
    # An option switched off in Settings is not offered, and not honoured if forged.
    open_tracking = open_tracking and switches.offer_open
    link_tracking = link_tracking and switches.offer_link
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
            session, user, draft, instrumenter=provided(request, Instrumenter)
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
