"""JSON API of sent email: send one, list them, read one with its delivery and tracking.

Every answer is scoped to the caller: another user's email is "not found",
whatever organisation they share. Domain errors become answers in one place
(``mailbeacon.app``): invalid input 422, not found 404, conflicts 409, bad
cursors 400.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse

from mailbeacon.config import Settings
from mailbeacon.kit.ids import RowId
from mailbeacon.mail import export, reading
from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.mail.ports import ConsentPolicy, Instrumenter, TrackedLinks
from mailbeacon.mail.schemas import (
    Draft,
    EventPageOut,
    MailDetailOut,
    MailFilter,
    MailPageOut,
    MailRowOut,
    MessageIn,
    RecipientsIn,
    RecipientsTrackingOut,
    RecipientTrackingOut,
    ReplyOut,
)
from mailbeacon.mail.service import message_service
from mailbeacon.models import TrackingDecision
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided
from mailbeacon.web.routing import ApiRoute

router = APIRouter(prefix="/api", tags=["mail"], route_class=ApiRoute)

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

    Files go in ``attachments``, base64-encoded, together at most the server's
    ``MAX_ATTACHMENT_BYTES`` (20 MB by default); an empty file or too much is refused
    (422, under ``errors.attachments``). The answer is the email as
    ``GET /api/mail/{id}`` shows it (every copy ``queued``).
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
        attachments=[AttachmentFile(a.filename, a.content_type, a.data) for a in body.attachments],
    )
    message = message_service.plan_send(
        session,
        user,
        draft,
        instrumenter=provided(request, Instrumenter),
        consent=provided(request, ConsentPolicy),
        attachment_limit=provided(request, Settings).MAX_ATTACHMENT_BYTES,
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
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: RowId, copy_id: RowId
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
    request: Request, session: DbSession, viewer: SignedInViewer, message_id: RowId
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
    request: Request, session: DbSession, viewer: CheckedViewer, message_id: RowId, copy_id: RowId
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


_CSV: dict[int | str, dict[str, Any]] = {
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV"}
}


@router.get("/mail/export.csv", response_class=PlainTextResponse, responses=_CSV)
def export_mail(
    session: DbSession,
    viewer: SignedInViewer,
    filter: Annotated[
        MailFilter | None, Query(description="tracked, opened, clicked or not_opened")
    ] = None,
    q: Annotated[str, Query(max_length=200, description="Search subject and recipients")] = "",
) -> Response:
    """Your sent emails as CSV, one line per email, under the filter and search given: the
    rows ``GET /api/mail`` lists, all pages."""
    return _csv_download(export.mail_csv(session, viewer.user.id, filter, q), "mail.csv")


@router.get(
    "/mail/{message_id}/timeline.csv",
    response_class=PlainTextResponse,
    responses={**_CSV, **_NOT_FOUND},
)
def export_timeline(session: DbSession, viewer: SignedInViewer, message_id: RowId) -> Response:
    """One of your emails' timeline as CSV: every event, machines included, newest first."""
    text = export.timeline_csv(session, viewer.user.id, message_id)
    return _csv_download(text, f"mail-{message_id}-timeline.csv")


def _csv_download(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/mail/rows", response_model=list[MailRowOut])
def mail_rows(
    session: DbSession,
    viewer: SignedInViewer,
    ids: Annotated[list[RowId], Query(max_length=reading.MAX_PAGE_SIZE)],
) -> list[MailRowOut]:
    """Some of your sent emails as the list shows them; ids that are not yours are left out."""
    return reading.mail_rows(session, viewer.user.id, ids)


@router.get("/mail/{message_id}", response_model=MailDetailOut, responses=_NOT_FOUND)
def mail_detail(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: RowId,
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


@router.get("/mail/{message_id}/replies", response_model=list[ReplyOut], responses=_NOT_FOUND)
def mail_replies(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: RowId,
    remote_images: Annotated[
        bool, Query(description="Keep remote images in body_html (never this site's pixels)")
    ] = False,
) -> list[ReplyOut]:
    """Replies, automatic replies and bounces to one of your emails, oldest first, each
    with the new text apart from the quoted history."""
    return reading.mail_replies(
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
    message_id: RowId,
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = reading.TIMELINE_PAGE,
) -> EventPageOut:
    """Every event of one of your emails, people and machines, newest first."""
    return reading.mail_events(session, viewer.user.id, message_id, before=before, limit=limit)


# Compose's chip beside each recipient, by the decision their copy would get.
CHIP_WORDS = {
    TrackingDecision.TRACKED: "tracked",
    TrackingDecision.AGGREGATE: "tracked: counted anonymously",
    TrackingDecision.NO_CONSENT: "not tracked: no consent",
    TrackingDecision.DISABLED_BY_ORG: "not tracked: off for your organisation",
    TrackingDecision.DISABLED_BY_USER: "not tracked: switched off",
    TrackingDecision.OWN_ADDRESS: "not tracked: your own address",
}


@router.post("/compose/recipients", response_model=RecipientsTrackingOut)
def recipient_tracking(
    request: Request, session: DbSession, viewer: CheckedViewer, body: RecipientsIn
) -> RecipientsTrackingOut:
    """Whether each recipient typed so far would be tracked, and why, before sending
    (compose's chips). Reads only: no contact is created. Addresses that cannot be read
    yet are left out."""
    draft = Draft(
        to=[body.to],
        cc=[body.cc],
        bcc=[body.bcc],
        open_tracking=body.open_tracking,
        link_tracking=body.link_tracking,
    )
    found = message_service.recipient_tracking(
        session, viewer.user, draft, consent=provided(request, ConsentPolicy)
    )
    return RecipientsTrackingOut(
        recipients=[
            RecipientTrackingOut(
                address=r.address,
                kind=r.kind,
                tracked=r.tracked,
                decision=r.decision,
                label=CHIP_WORDS.get(r.decision, "tracked" if r.tracked else "not tracked"),
                reason=r.reason,
            )
            for r in found
        ]
    )
