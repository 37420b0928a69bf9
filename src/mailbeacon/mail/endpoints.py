"""JSON API: compose and send, then follow each recipient's delivery and tracking."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError

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
from mailbeacon.mail.views import copies_of_messages, message_of_user
from mailbeacon.models import Message, RecipientCopy
from mailbeacon.tracking.schemas import FiguresOut, figures_of
from mailbeacon.web.deps import (
    CheckedViewer,
    DbSession,
    SignedInViewer,
    commit_and_wake_outbox,
    get_runtime,
)

router = APIRouter(prefix="/api")


class MessageIn(BaseModel):
    """An email to send. Address fields take a list, or one string of comma-separated addresses."""

    to: list[str] | str = Field(default_factory=list)
    cc: list[str] | str = Field(default_factory=list)
    bcc: list[str] | str = Field(default_factory=list)
    subject: str = ""
    body_html: str | None = None
    body_text: str | None = None
    # Omitted: as in the user's last send. An option switched off in Settings is refused.
    open_tracking: bool | None = None
    link_tracking: bool | None = None


class RecipientOut(FiguresOut):
    id: int
    address: str
    kind: str
    status: str
    decision: str
    decision_reason: str
    open_tracked: bool
    links_tracked: bool
    sent_at: datetime | None
    smtp_reply: str


class MessageOut(BaseModel):
    id: int
    subject: str
    sender_name: str
    sender_address: str
    to: str
    cc: str
    open_tracking: bool
    link_tracking: bool
    created_at: datetime
    sent_at: datetime | None
    open_count: int
    click_count: int
    first_open_at: datetime | None
    first_click_at: datetime | None
    recipients: list[RecipientOut]


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else value


def message_out(message: Message, copies: list[RecipientCopy]) -> MessageOut:
    return MessageOut(
        id=message.id,
        subject=message.subject,
        sender_name=message.sender_name,
        sender_address=message.sender_address,
        to=message.to_header,
        cc=message.cc_header,
        open_tracking=message.open_tracking,
        link_tracking=message.link_tracking,
        created_at=message.created_at,
        sent_at=message.sent_at,
        open_count=message.open_count,
        click_count=message.click_count,
        first_open_at=message.first_open_at,
        first_click_at=message.first_click_at,
        recipients=[
            RecipientOut(
                id=c.id,
                address=c.address,
                kind=str(c.kind),
                status=str(c.status),
                decision=str(c.decision),
                decision_reason=c.decision_reason,
                open_tracked=c.open_tracked,
                links_tracked=c.links_tracked,
                sent_at=c.sent_at,
                smtp_reply=c.smtp_reply,
                **figures_of(c),
            )
            for c in copies
        ],
    )


@router.post(
    "/messages",
    status_code=202,
    response_model=MessageOut,
    responses={
        409: {"description": "No mailbox connected"},
        422: {"description": "Invalid draft, with messages per field"},
    },
)
def send_message(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    body: MessageIn,
) -> Response:
    """Plan the send and answer 202 at once; the outbox worker delivers in the background."""
    user = viewer.user
    runtime = get_runtime(request)
    open_tracking, link_tracking = account_service.resolve_switches(
        user, body.open_tracking, body.link_tracking
    )
    try:
        draft = Draft(
            to=_as_list(body.to),
            cc=_as_list(body.cc),
            bcc=_as_list(body.bcc),
            subject=body.subject,
            body_html=body.body_html,
            body_text=body.body_text,
            open_tracking=open_tracking,
            link_tracking=link_tracking,
        )
        message = message_service.plan_send(
            session, user, draft, codec=runtime.codec, base_url=runtime.settings.BASE_URL
        )
    except InvalidDraft as exc:
        session.rollback()
        return JSONResponse({"error": "invalid draft", "errors": exc.errors}, status_code=422)
    except ValidationError as exc:
        session.rollback()
        return JSONResponse(
            {"error": "invalid draft", "errors": field_errors(exc)}, status_code=422
        )
    except NoMailbox:
        session.rollback()
        return JSONResponse(
            {
                "error": "No mailbox is connected: connect one in Settings > Email sync "
                "(or use the demo mailbox)."
            },
            status_code=409,
        )
    commit_and_wake_outbox(request, session)
    copies = copies_of_messages(session, [message.id])[message.id]
    out = message_out(message, copies)
    return JSONResponse(
        out.model_dump(mode="json"),
        status_code=202,
        headers={"location": f"/api/messages/{message.id}"},
    )


@router.get("/messages/{message_id}", response_model=MessageOut)
def get_message(session: DbSession, viewer: SignedInViewer, message_id: int) -> MessageOut:
    """One of the user's messages with each recipient's delivery status and figures."""
    message = message_of_user(session, viewer.user.id, message_id)
    if message is None:
        raise HTTPException(status_code=404)
    return message_out(message, copies_of_messages(session, [message.id])[message.id])


@router.post(
    "/messages/{message_id}/copies/{copy_id}/retry",
    status_code=202,
    response_model=MessageOut,
    responses={
        404: {"description": "No such copy among your messages"},
        409: {"description": "The copy's delivery is not unknown"},
    },
)
def retry_copy(
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: int, copy_id: int
) -> Response:
    """Send again a copy whose delivery is ``unknown`` (the connection was lost mid-send).

    The recipient may or may not have received it; only its sender decides to resend.
    """
    try:
        message_service.retry_unknown(session, viewer.user, copy_id, message_id=message_id)
    except CopyNotFound:
        raise HTTPException(status_code=404) from None
    except CannotRetry as exc:
        session.rollback()
        return JSONResponse({"error": str(exc)}, status_code=409)
    commit_and_wake_outbox(request, session)
    message = message_of_user(session, viewer.user.id, message_id)
    assert message is not None
    out = message_out(message, copies_of_messages(session, [message.id])[message.id])
    return JSONResponse(out.model_dump(mode="json"), status_code=202)
