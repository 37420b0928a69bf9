"""Pages: the Demo inbox, where the demo mailbox's deliveries are read as their
recipients would read them.

A delivered copy is shown as delivered, tracking included, inside a sandboxed
frame: opening it here fires its pixel exactly as an outside mail client would.
Only the sender of a message sees its deliveries.
"""

from __future__ import annotations

import email.policy
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from mailbeacon.kit import frames
from mailbeacon.mail import repository
from mailbeacon.mail.attachments import AttachmentFile, clean_content_type, clean_filename
from mailbeacon.mail.views.sent import attachment_response
from mailbeacon.models import DemoMessage
from mailbeacon.web.deps import DbSession, SignedInViewer, render

router = APIRouter()

DEMO_PAGE_SIZE = 300
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
# After an answer (sync/views.py); chosen by key, never echoed from the query string.
ANSWER_NOTICES = {
    "replied": "The reply was sent back: see it on the email's page.",
    "auto-replied": "An automatic reply was sent back; it never counts as a reply.",
    "bounced": "The email bounced: its copy to this recipient is marked bounced.",
}


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
        for d in repository.demo_deliveries(session, viewer.user.id, DEMO_PAGE_SIZE)
    ]
    owned = repository.own_message_ids(
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
    mailbox = repository.mailbox_for_user(session, viewer.user.id)
    return render(
        request,
        "mail/demo_inbox.html",
        {
            "active": "demo",
            "groups": sorted(groups.values(), key=lambda g: g.recipient.lower()),
            "using_demo": mailbox is not None and mailbox.is_demo,
        },
    )


@router.get("/demo-inbox/{demo_id}", response_class=HTMLResponse)
def demo_message(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    demo_id: int,
    part: str = "",
    notice: str = "",
) -> Response:
    """One delivered copy, read as its recipient would read it, and answered as they may."""
    demo = session.get(DemoMessage, demo_id)
    if demo is None:
        raise HTTPException(status_code=404)
    msg = BytesParser(policy=email.policy.default).parsebytes(demo.raw)
    assert isinstance(msg, EmailMessage)
    owned = repository.own_message_ids(session, viewer.user.id, {_header(msg, "Message-ID")} - {""})
    if not owned:
        raise HTTPException(status_code=404)
    html_part = msg.get_body(preferencelist=("html",))
    text_part = msg.get_body(preferencelist=("plain",))
    show = "text" if (part == "text" and text_part is not None) or html_part is None else "html"
    if show == "html" and html_part is not None:
        document = frames.delivered_html_document(str(html_part.get_content()))
    elif text_part is not None:
        document = frames.text_document(str(text_part.get_content()), clickable_urls=True)
    else:
        document = frames.text_document("(This email has no readable body.)")
    headers = [(name, _header(msg, name)) for name in ("From", "To", "Cc", "Subject", "Date")]
    files = [
        DemoFile(index, file.filename, file.content_type, len(file.data))
        for index, file in enumerate(_delivered_files(msg))
    ]
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
            "notice": ANSWER_NOTICES.get(notice, ""),
            "files": files,
        },
        headers={"content-security-policy": DEMO_MESSAGE_CSP, "referrer-policy": "no-referrer"},
    )


@dataclass(frozen=True, slots=True)
class DemoFile:
    index: int
    filename: str
    content_type: str
    size: int


def _delivered_files(msg: EmailMessage) -> list[AttachmentFile]:
    """The files of a delivered copy, as a mail client would save them."""
    files = []
    for part in msg.iter_attachments():
        payload = part.get_payload(decode=True)
        files.append(
            AttachmentFile(
                part.get_filename() or "attachment",
                part.get_content_type(),
                payload if isinstance(payload, bytes) else b"",
            )
        )
    return files


@router.get("/demo-inbox/{demo_id}/attachments/{index}")
def demo_attachment(
    session: DbSession, viewer: SignedInViewer, demo_id: int, index: int
) -> Response:
    """A file of a delivered copy, as its recipient would save it; only for its sender."""
    demo = session.get(DemoMessage, demo_id)
    if demo is None:
        raise HTTPException(status_code=404)
    msg = BytesParser(policy=email.policy.default).parsebytes(demo.raw)
    assert isinstance(msg, EmailMessage)
    if not repository.own_message_ids(session, viewer.user.id, {_header(msg, "Message-ID")} - {""}):
        raise HTTPException(status_code=404)
    files = _delivered_files(msg)
    if not 0 <= index < len(files):
        raise HTTPException(status_code=404)
    file = files[index]
    return attachment_response(
        AttachmentFile(clean_filename(file.filename), clean_content_type(file.content_type, ""),
                       file.data)
    )  # fmt: skip
