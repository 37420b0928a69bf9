"""Pages: compose, Sent (delivery and tracking decision per recipient) and the Demo inbox.

No page here ever renders a tracked body: Sent shows figures and decisions
only, and the Demo inbox shows a recipient's copy inside a sandboxed frame, as
an outside mail client would (DESIGN: "No false self-opens").
"""

from __future__ import annotations

import email.policy
import html
import re
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import LargeBinary, cast, func, select
from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import field_errors
from mailbeacon.accounts.service import account_service
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import (
    CannotRetry,
    CopyNotFound,
    InvalidDraft,
    NoMailbox,
    message_service,
)
from mailbeacon.models import CopyStatus, DemoMessage, Message, RecipientCopy, User
from mailbeacon.web.deps import (
    CheckedViewer,
    DbSession,
    SignedInViewer,
    commit_and_wake_outbox,
    get_runtime,
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
# The Demo inbox message page: the srcdoc frame inherits this policy, so it must
# let the email load its images (the pixel among them) and styles from anywhere,
# as a mail client would. Scripts stay off twice: here and in the frame sandbox.
DEMO_MESSAGE_CSP = (
    "default-src 'none'; img-src * data: blob:; style-src 'self' 'unsafe-inline' *; "
    "font-src * data:; media-src * data:; frame-src 'self'; script-src 'none'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
# Without allow-same-origin the frame has an opaque origin: its requests are
# cross-site and carry none of this site's SameSite cookies. Without
# allow-scripts nothing in the email runs. allow-popups lets its links open in
# a new tab, and allow-popups-to-escape-sandbox lets the page opened there work.
DEMO_FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"

NOTICES = {
    "queued": "Your email is on its way: it is being sent in the background.",
    "resent": "The copy is queued again: it is being sent in the background.",
    "not-resent": "That copy was not sent again: its delivery is no longer unknown.",
}
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
SENT_PAGE_SIZE = 100
DEMO_PAGE_SIZE = 300


# ------------------------------------------------------------------ read queries
# Read-only queries for these pages, all scoped to the signed-in user.


def _messages_of_user(session: Session, user_id: int, limit: int) -> list[Message]:
    return list(
        session.scalars(
            select(Message)
            .where(Message.user_id == user_id, Message.is_preview.is_(False))
            .order_by(Message.created_at.desc(), Message.id.desc())
            .limit(limit)
        )
    )


def message_of_user(session: Session, user_id: int, message_id: int) -> Message | None:
    """The message if this user sent it; anyone else's is "not found"."""
    return session.scalars(
        select(Message).where(Message.id == message_id, Message.user_id == user_id)
    ).one_or_none()


def copies_of_messages(session: Session, message_ids: list[int]) -> dict[int, list[RecipientCopy]]:
    copies: dict[int, list[RecipientCopy]] = {m: [] for m in message_ids}
    if message_ids:
        for copy in session.scalars(
            select(RecipientCopy)
            .where(RecipientCopy.message_id.in_(message_ids))
            .order_by(RecipientCopy.id)
        ):
            copies[copy.message_id].append(copy)
    return copies


def _demo_messages(session: Session, user_id: int, limit: int) -> list[DemoMessage]:
    """The newest demo deliveries of this user's messages.

    Filtered before the limit, or other users' mail would push this user's out of
    the page. A delivery belongs to a message of the user sent to its recipient
    whose Message-ID its raw bytes contain; the page then checks the parsed header.
    """
    header = Message.message_id_header
    if session.get_bind().dialect.name == "postgresql":
        # bytea has no strpos; its escape form keeps printable ASCII (a Message-ID) as is.
        contains = func.strpos(func.encode(DemoMessage.raw, "escape"), header) > 0
    else:
        contains = func.instr(DemoMessage.raw, cast(header, LargeBinary)) > 0
    owned = (
        select(Message.id)
        .join(RecipientCopy, RecipientCopy.message_id == Message.id)
        .where(
            Message.user_id == user_id,
            Message.message_id_header != "",
            func.lower(RecipientCopy.address) == func.lower(DemoMessage.recipient),
            contains,
        )
        .exists()
    )
    return list(
        session.scalars(
            select(DemoMessage)
            .where(owned)
            .order_by(DemoMessage.received_at.desc(), DemoMessage.id.desc())
            .limit(limit)
        )
    )


def _own_message_ids(session: Session, user_id: int, header_ids: set[str]) -> dict[str, int]:
    """Which Message-ID headers belong to this user's messages (header -> message id)."""
    if not header_ids:
        return {}
    rows = session.execute(
        select(Message.message_id_header, Message.id).where(
            Message.user_id == user_id, Message.message_id_header.in_(sorted(header_ids))
        )
    )
    return {header: message_id for header, message_id in rows}


# ------------------------------------------------------------------ compose


def _compose_page(
    request: Request,
    session: Session,
    user: User,
    values: dict[str, Any],
    *,
    errors: dict[str, list[str]] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    mailbox = account_service.get_mailbox(session, user)
    switches = account_service.compose_switches(user)
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
    switches = account_service.compose_switches(viewer.user)
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
    runtime = get_runtime(request)
    switches = account_service.compose_switches(user)
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
            session, user, draft, codec=runtime.codec, base_url=runtime.settings.BASE_URL
        )
    except (InvalidDraft, ValidationError, NoMailbox) as exc:
        # Nothing of a refused draft may be committed; the form comes back filled in.
        session.rollback()
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
    commit_and_wake_outbox(request, session)
    return RedirectResponse(f"/sent/{message.id}?notice=queued", status_code=303)


# ------------------------------------------------------------------ sent


_PENDING = frozenset({CopyStatus.QUEUED, CopyStatus.SENDING})


@router.get("/sent", response_class=HTMLResponse)
def sent(request: Request, session: DbSession, viewer: SignedInViewer) -> Response:
    messages = _messages_of_user(session, viewer.user.id, SENT_PAGE_SIZE)
    copies = copies_of_messages(session, [m.id for m in messages])
    return render(
        request,
        "mail/sent.html",
        {
            "active": "sent",
            "rows": [(m, copies[m.id]) for m in messages],
            "pending": any(c.status in _PENDING for cs in copies.values() for c in cs),
        },
    )


@router.get("/sent/{message_id}", response_class=HTMLResponse)
def sent_message(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    notice: str = "",
) -> Response:
    message = message_of_user(session, viewer.user.id, message_id)
    if message is None:
        raise HTTPException(status_code=404)
    copies = copies_of_messages(session, [message.id])[message.id]
    return render(
        request,
        "mail/sent_message.html",
        {
            "active": "sent",
            "message": message,
            "copies": copies,
            "pending": any(c.status in _PENDING for c in copies),
            "notice": NOTICES.get(notice, ""),
        },
    )


@router.post("/sent/{message_id}/copies/{copy_id}/retry")
def retry_copy(
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: int, copy_id: int
) -> Response:
    """Send an ``unknown`` copy again, on the sender's say; anyone else's is "not found"."""
    try:
        message_service.retry_unknown(session, viewer.user, copy_id, message_id=message_id)
    except CopyNotFound:
        raise HTTPException(status_code=404) from None
    except CannotRetry:
        session.rollback()
        return RedirectResponse(f"/sent/{message_id}?notice=not-resent", status_code=303)
    commit_and_wake_outbox(request, session)
    return RedirectResponse(f"/sent/{message_id}?notice=resent", status_code=303)


# ------------------------------------------------------------------ demo inbox


@dataclass(slots=True)
class DemoSummary:
    id: int
    recipient: str
    sender: str
    subject: str
    received_at: datetime
    message_id: int


@dataclass(slots=True)
class DemoGroup:
    recipient: str
    items: list[DemoSummary] = field(default_factory=list)


def _header(msg: Any, name: str) -> str:
    try:
        value = msg.get(name)
    except Exception:  # a malformed header must not hide the rest of the inbox
        return ""
    return " ".join(str(value).split()) if value is not None else ""


@router.get("/demo-inbox", response_class=HTMLResponse)
def demo_inbox(request: Request, session: DbSession, viewer: SignedInViewer) -> Response:
    """What the demo mailbox delivered for this user's messages, grouped by recipient."""
    parser = BytesHeaderParser(policy=email.policy.default)
    parsed = [
        (d, parser.parsebytes(d.raw))
        for d in _demo_messages(session, viewer.user.id, DEMO_PAGE_SIZE)
    ]
    owned = _own_message_ids(
        session, viewer.user.id, {_header(h, "Message-ID") for _, h in parsed} - {""}
    )
    groups: dict[str, DemoGroup] = {}
    for demo, headers in parsed:
        message_id = owned.get(_header(headers, "Message-ID"))
        if message_id is None:
            continue
        group = groups.setdefault(demo.recipient.lower(), DemoGroup(recipient=demo.recipient))
        group.items.append(
            DemoSummary(
                id=demo.id,
                recipient=demo.recipient,
                sender=_header(headers, "From"),
                subject=_header(headers, "Subject") or "(no subject)",
                received_at=demo.received_at,
                message_id=message_id,
            )
        )
    mailbox = account_service.get_mailbox(session, viewer.user)
    return render(
        request,
        "mail/demo_inbox.html",
        {
            "active": "demo",
            "groups": sorted(groups.values(), key=lambda g: g.recipient.lower()),
            "using_demo": mailbox is not None and mailbox.is_demo,
        },
    )


_URL = re.compile(r"https?://[^\s<>\"'()\[\]]+[^\s<>\"'()\[\].,;:!?]", re.IGNORECASE)
_HEAD_TAG = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_DOCTYPE = re.compile(r"^\s*<!doctype[^>]*>", re.IGNORECASE)
# Links open in a new tab, as in a webmail client; the first <base> with a target wins.
_BASE = '<base target="_blank">'


def frame_document(body_html: str) -> str:
    """The recipient's HTML as the frame shows it, with links opening in a new tab."""
    found = _HEAD_TAG.search(body_html) or _DOCTYPE.match(body_html)
    if found:
        return body_html[: found.end()] + _BASE + body_html[found.end() :]
    return _BASE + body_html


def text_frame_document(body_text: str) -> str:
    """A plain-text copy as a mail client shows it: wrapped, with its URLs clickable."""
    pieces: list[str] = []
    last = 0
    for match in _URL.finditer(body_text):
        pieces.append(html.escape(body_text[last : match.start()]))
        url = html.escape(match.group(0))
        pieces.append(f'<a href="{url}">{url}</a>')
        last = match.end()
    pieces.append(html.escape(body_text[last:]))
    return (
        f"<!doctype html><html><head><meta charset=utf-8>{_BASE}</head>"
        '<body><pre style="white-space:pre-wrap;font:14px/1.5 ui-monospace,monospace;margin:1em">'
        + "".join(pieces)
        + "</pre></body></html>"
    )


@router.get("/demo-inbox/{demo_id}", response_class=HTMLResponse)
def demo_message(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    demo_id: int,
    part: str = "",
) -> Response:
    """One delivered copy, read as its recipient would read it."""
    demo = session.get(DemoMessage, demo_id)
    if demo is None:
        raise HTTPException(status_code=404)
    msg = BytesParser(policy=email.policy.default).parsebytes(demo.raw)
    assert isinstance(msg, EmailMessage)
    owned = _own_message_ids(session, viewer.user.id, {_header(msg, "Message-ID")} - {""})
    if not owned:
        raise HTTPException(status_code=404)
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    show = "text" if (part == "text" and text_part is not None) or html_part is None else "html"
    if show == "html" and html_part is not None:
        document = frame_document(str(html_part.get_content()))
    elif text_part is not None:
        document = text_frame_document(str(text_part.get_content()))
    else:
        document = text_frame_document("(This email has no readable body.)")
    headers = [(name, _header(msg, name)) for name in ("From", "To", "Cc", "Subject", "Date")]
    return render(
        request,
        "mail/demo_message.html",
        {
            "active": "demo",
            "demo": demo,
            "headers": [(n, v) for n, v in headers if v],
            "document": document,
            "sandbox": DEMO_FRAME_SANDBOX,
            "show": show,
            "has_html": html_part is not None,
            "has_text": text_part is not None,
            "message_id": next(iter(owned.values())),
        },
        headers={"content-security-policy": DEMO_MESSAGE_CSP, "referrer-policy": "no-referrer"},
    )
