"""Pages: compose and send.

The form posts here; planning writes the message, its copies and an outbox
entry in the request's unit of work, and the outbox worker is woken once that
commits. The page then goes to the email's detail, where delivery shows up.

The form is read by the route itself, with limits of its own: Starlette's form
parsers refuse a field over 1 MB by default, far below what a message may be,
and answered a bare error page that lost the draft. Whatever goes wrong, the
answer is this page, with the reason at the field. Files come in the same
multipart form; a browser cannot be handed them back, so a refused draft keeps its
text and says which files to attach again (compose.js checks sizes before sending,
so the usual mistake never leaves the page).
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
from mailbeacon.mail.attachments import (
    MAX_ATTACHMENTS,
    AttachmentFile,
    clean_filename,
    size_text,
)
from mailbeacon.mail.mime import html_to_text
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
    "attachments": "Attachments",
}
_TEXT_FIELDS = ("to", "cc", "bcc", "subject", "body_format", "body_html", "body_text")
# The form has a dozen fields and some files; anything beyond is not this form. Twice
# the files an email may carry, so that a few too many get the field's own message.
_MAX_FIELDS = 50
_MAX_FILES = 2 * MAX_ATTACHMENTS
_TRUE = frozenset({"true", "on", "1", "yes"})


def _compose_page(
    request: Request,
    session: Session,
    user: User,
    values: dict[str, Any],
    *,
    errors: dict[str, list[str]] | None = None,
    status_code: int = 200,
    confirm: tuple[list[str], str, bool] | None = None,
) -> HTMLResponse:
    """The compose page with ``values``; with ``confirm`` (what is missing, the question,
    whether files were dropped) it asks whether to send without a subject or message."""
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
            "attachment_limit": provided(request, Settings).MAX_ATTACHMENT_BYTES,
            "attachment_limit_text": size_text(provided(request, Settings).MAX_ATTACHMENT_BYTES),
            "max_attachments": MAX_ATTACHMENTS,
            "confirm_missing": confirm[0] if confirm else [],
            "confirm_question": confirm[1] if confirm else "",
            "files_dropped": confirm[2] if confirm else False,
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
    files: list[AttachmentFile] = field(default_factory=list)
    # Files the browser sent but that could not be read.
    unreadable: list[str] = field(default_factory=list)
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
        form = await request.form(max_part_size=limit, max_files=_MAX_FILES, max_fields=_MAX_FIELDS)
    except (HTTPException, MultiPartException):
        return ComposeForm(
            problem=(
                f"The form could not be read (it held more than {_MAX_FILES} files or too "
                "many fields, or was cut short), so the draft could not be kept. Please "
                "write it again."
            ),
            status_code=400,
        )
    values: dict[str, str] = {}
    files: list[AttachmentFile] = []
    unreadable: list[str] = []
    for name, value in form.multi_items():
        if isinstance(value, str):
            values[name] = value
        elif name != "attachments":
            # A file where the form has text (a hand-made request): not this form.
            await value.close()
            return ComposeForm(
                problem=(
                    "The form could not be read (it held a file in place of text), so the "
                    "draft could not be kept. Please write it again."
                ),
                status_code=400,
            )
        else:
            try:
                data = await value.read()
            except OSError:
                unreadable.append(value.filename or "a file")
                continue
            finally:
                await value.close()
            if not value.filename and not data:
                continue  # the file field with nothing chosen
            content_type = value.headers.get("content-type", "")
            files.append(AttachmentFile(value.filename or "", content_type, data))
    return ComposeForm(fields=values, files=files, unreadable=unreadable)


ComposeFormDep = Annotated[ComposeForm, Depends(read_compose_form)]


async def _viewer_of_form(request: Request, form: ComposeFormDep, viewer: SignedInViewer) -> Viewer:
    """The CSRF check, on the form already read. A form that could not be read changes
    nothing (the answer is the compose page again), so it is not checked."""
    if form.problem:
        return viewer
    return await csrf_checked(request, viewer)


def _missing_parts(subject: str, body_format: str, body_html: str, body_text: str) -> list[str]:
    """What an email is sent without, that its author may have forgotten: a subject, a
    message (an HTML body with neither text nor an image counts as none)."""
    missing = []
    if not subject.strip():
        missing.append("a subject")
    if body_format == "text":
        empty = not body_text.strip()
    else:
        empty = not html_to_text(body_html).strip() and "<img" not in body_html.lower()
    if empty:
        missing.append("a message")
    return missing


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
    missing = _missing_parts(subject, body_format, body_html, body_text)
    if missing and posted.get("send_anyway", "").lower() not in _TRUE:
        # Without JavaScript (which asks in a dialog before posting) the server asks.
        if len(missing) == 2:
            question = "This email has no subject and no message."
        else:
            question = f"This email has no {missing[0].removeprefix('a ')}."
        errors: dict[str, list[str]] = {}
        try:
            # Wrong addresses are said at the same time, not after the question.
            message_service.recipients(Draft(to=[to], cc=[cc], bcc=[bcc]))
        except InvalidDraft as exc:
            errors = exc.errors
        return _compose_page(
            request,
            session,
            user,
            values,
            errors=errors,
            status_code=422 if errors else 200,
            confirm=(missing, question, bool(form.files)),
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
            attachments=form.files,
        )
        if form.unreadable:
            names = ", ".join(f"“{clean_filename(name)}”" for name in form.unreadable)
            raise InvalidDraft({"attachments": [f"{names} could not be read: attach it again."]})
        message = message_service.plan_send(
            session,
            user,
            draft,
            instrumenter=provided(request, Instrumenter),
            consent=provided(request, ConsentPolicy),
            attachment_limit=provided(request, Settings).MAX_ATTACHMENT_BYTES,
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
        if form.files or form.unreadable:
            # A browser cannot be given files back: say so where they were chosen.
            names = ", ".join(f"“{clean_filename(f.filename)}”" for f in form.files if f.data)
            again = (
                f"Attach again the files you had chosen ({names}): a refused draft keeps "
                "its text, not its files."
                if names
                else "Attach your files again: a refused draft keeps its text, not its files."
            )
            errors = {**errors, "attachments": [*errors.get("attachments", []), again]}
        return _compose_page(request, session, user, values, errors=errors, status_code=422)
    return RedirectResponse(f"/mail/{message.id}?notice=queued", status_code=303)
