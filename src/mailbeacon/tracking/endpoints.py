"""JSON API of the Mail tab: sent emails, their tracking, their timelines.

Every answer is scoped to the caller: another user's email is "not found",
whatever organisation they share.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request

from mailbeacon.tracking import activity
from mailbeacon.tracking.activity import InvalidCursor, MailNotFound
from mailbeacon.tracking.schemas import (
    EventPageOut,
    MailDetailOut,
    MailFilter,
    MailPageOut,
    MailRowOut,
)
from mailbeacon.web.deps import DbSession, SignedInViewer, get_runtime

router = APIRouter(prefix="/api/mail", tags=["mail"])

_NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "No such email among yours"}}
_BAD_CURSOR: dict[int | str, dict[str, Any]] = {
    400: {"description": "The cursor was not handed out by this server"}
}


@router.get("", response_model=MailPageOut, responses=_BAD_CURSOR)
def list_mail(
    session: DbSession,
    viewer: SignedInViewer,
    filter: Annotated[
        MailFilter | None, Query(description="tracked, opened, clicked or not_opened")
    ] = None,
    q: Annotated[str, Query(max_length=200, description="Search subject and recipients")] = "",
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    after: Annotated[str | None, Query(description="newer_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=activity.MAX_PAGE_SIZE)] = activity.PAGE_SIZE,
) -> MailPageOut:
    """Your sent emails, newest first, with open and link icons and what hovering shows."""
    try:
        return activity.mail_page(
            session,
            viewer.user.id,
            mail_filter=filter,
            q=q,
            before=before,
            after=after,
            limit=limit,
        )
    except InvalidCursor as exc:
        raise HTTPException(status_code=400, detail="invalid cursor") from exc


@router.get("/rows", response_model=list[MailRowOut])
def mail_rows(
    session: DbSession,
    viewer: SignedInViewer,
    ids: Annotated[list[int], Query(max_length=activity.MAX_PAGE_SIZE)],
) -> list[MailRowOut]:
    """Some of your sent emails as the list shows them; ids that are not yours are left out."""
    return activity.mail_rows(session, viewer.user.id, ids)


@router.get("/{message_id}", response_model=MailDetailOut, responses=_NOT_FOUND)
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
    runtime = get_runtime(request)
    try:
        return activity.mail_detail(
            session,
            viewer.user.id,
            message_id,
            codec=runtime.codec,
            base_url=runtime.settings.BASE_URL,
            remote_images=remote_images,
        )
    except MailNotFound as exc:
        raise HTTPException(status_code=404) from exc


@router.get(
    "/{message_id}/events", response_model=EventPageOut, responses={**_NOT_FOUND, **_BAD_CURSOR}
)
def mail_events(
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = activity.TIMELINE_PAGE,
) -> EventPageOut:
    """Every event of one of your emails, people and machines, newest first."""
    try:
        return activity.mail_events(session, viewer.user.id, message_id, before=before, limit=limit)
    except MailNotFound as exc:
        raise HTTPException(status_code=404) from exc
    except InvalidCursor as exc:
        raise HTTPException(status_code=400, detail="invalid cursor") from exc
