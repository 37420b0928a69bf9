"""JSON API of sent email: send one, list them, read one with its delivery and tracking.

Every answer is scoped to the caller: another user's email is "not found",
whatever organisation they share. Domain errors become answers in one place
(``mailbeacon.app``): invalid input 422, not found 404, conflicts 409, bad
cursors 400.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from mailbeacon.mail import reading
from mailbeacon.mail.ports import Instrumenter, TrackedLinks
from mailbeacon.mail.schemas import (
    Draft,
    EventPageOut,
    MailDetailOut,
    MailFilter,
    MailPageOut,
    MailRowOut,
    MessageIn,
)
from mailbeacon.mail.service import message_service
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided

router = APIRouter(prefix="/api", tags=["mail"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such email among yours"}}
_BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    400: {"description": "The cursor was not handed out by this server"}
}
_SEND_ERRORS: dict[int | str, dict[str, Any]] = {
    409: {"description": "No mailbox connected"},
    422: {"description": "Invalid draft, with messages per field"},
}
_RETRY_ERRORS: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such copy among your emails"},
    409: {"description": "The copy's delivery is not unknown"},
}


def _as_list(value: list[str] | str) -> list[str]:
    return [value] if isinstance(value, str) else value


@router.post("/messages", status_code=202, response_model=MailDetailOut, responses=_SEND_ERRORS)
def send_message(
    request: Request, response: Response, session: DbSession, viewer: CheckedViewer, body: MessageIn
) -> MailDetailOut:
    """Plan the send and answer 202 at once; the outbox worker delivers in the background.

    The answer is the email as ``GET /api/mail/{id}`` shows it (every copy ``queued``).
    """
    user = viewer.user
    open_tracking, link_tracking = message_service.resolve_switches(
        user, body.open_tracking, body.link_tracking
    )
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
        session, user, draft, instrumenter=provided(request, Instrumenter)
    )
    response.headers["location"] = f"/api/mail/{message.id}"
    return reading.mail_detail(session, user.id, message.id, links=provided(request, TrackedLinks))


@router.post(
    "/mail/{message_id}/copies/{copy_id}/retry",
    status_code=202,
    response_model=MailDetailOut,
    responses=_RETRY_ERRORS,
)
def retry_copy(
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: int, copy_id: int
) -> MailDetailOut:
    """Send again a copy whose delivery is ``unknown`` (the connection was lost mid-send).

    The recipient may or may not have received it; only its sender decides to resend.
    """
    message_service.retry_unknown(session, viewer.user, copy_id, message_id=message_id)
    return reading.mail_detail(
        session, viewer.user.id, message_id, links=provided(request, TrackedLinks)
    )


@router.get(
    "/messages/{message_id}", response_model=MailDetailOut, responses=_NOT_FOUND, deprecated=True
)
def get_message(
    request: Request, session: DbSession, viewer: SignedInViewer, message_id: int
) -> MailDetailOut:
    """Deprecated alias of ``GET /api/mail/{message_id}``, kept for scripts written
    against earlier versions; the same answer."""
    return reading.mail_detail(
        session, viewer.user.id, message_id, links=provided(request, TrackedLinks)
    )


@router.post(
    "/messages/{message_id}/copies/{copy_id}/retry",
    status_code=202,
    response_model=MailDetailOut,
    responses=_RETRY_ERRORS,
    deprecated=True,
)
def retry_copy_old_path(
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: int, copy_id: int
) -> MailDetailOut:
    """Deprecated alias of ``POST /api/mail/{message_id}/copies/{copy_id}/retry``."""
    return retry_copy(request, session, viewer, message_id, copy_id)


@router.get("/mail", response_model=MailPageOut, responses=_BAD_CURSOR)
def list_mail(
    session: DbSession,
    viewer: SignedInViewer,
    filter: Annotated[
        MailFilter | None, Query(description="tracked, opened, clicked or not_opened")
    ] = None,
    q: Annotated[str, Query(max_length=200, description="Search subject and recipients")] = "",
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    after: Annotated[str | None, Query(description="newer_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=reading.MAX_PAGE_SIZE)] = reading.PAGE_SIZE,
) -> MailPageOut:
    """Your sent emails, newest first, with open and link icons and what hovering shows."""
    return reading.mail_page(
        session, viewer.user.id, mail_filter=filter, q=q, before=before, after=after, limit=limit
    )


@router.get("/mail/rows", response_model=list[MailRowOut])
def mail_rows(
    session: DbSession,
    viewer: SignedInViewer,
    ids: Annotated[list[int], Query(max_length=reading.MAX_PAGE_SIZE)],
) -> list[MailRowOut]:
    """Some of your sent emails as the list shows them; ids that are not yours are left out."""
    return reading.mail_rows(session, viewer.user.id, ids)


@router.get("/mail/{message_id}", response_model=MailDetailOut, responses=_NOT_FOUND)
def mail_detail(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    remote_images: Annotated[
        bool, Query(description="Keep remote images in body_html (never this site's pixels)")
    ] = False,
) -> MailDetailOut:
    """One of your sent emails: per-recipient figures, clicks per link, timeline, body."""
    return reading.mail_detail(
        session,
        viewer.user.id,
        message_id,
        links=provided(request, TrackedLinks),
        remote_images=remote_images,
    )


@router.get(
    "/mail/{message_id}/events",
    response_model=EventPageOut,
    responses={**_NOT_FOUND, **_BAD_CURSOR},
)
def mail_events(
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = reading.TIMELINE_PAGE,
) -> EventPageOut:
    """Every event of one of your emails, people and machines, newest first."""
    return reading.mail_events(session, viewer.user.id, message_id, before=before, limit=limit)
