"""Pages: the Sales Assistant (the notification feed) and its forms."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from mailbeacon.notify.schemas import NotificationSettings
from mailbeacon.notify.service import notification_service
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, render

router = APIRouter(include_in_schema=False)

NOTICES = {
    "settings": "Your notification settings are saved.",
    "all-read": "All notifications are marked read.",
}


@router.get("/assistant", response_class=HTMLResponse)
def assistant(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    before: str = "",
    notice: str = "",
    error: str = "",
) -> Response:
    """The Sales Assistant: who opened what and clicked which link, newest first."""
    page = notification_service.feed(session, viewer.user, before or None)
    return render(
        request,
        "notify/assistant.html",
        {
            "active": "assistant",
            "page": page,
            "paged": bool(before),
            "settings": notification_service.settings(viewer.user),
            "notice": NOTICES.get(notice, ""),
            "error": error == "settings",
        },
    )


@router.get("/assistant/items", response_class=HTMLResponse)
def assistant_items(request: Request, session: DbSession, viewer: SignedInViewer) -> Response:
    """The newest notifications as HTML, for the feed's live updates."""
    page = notification_service.feed(session, viewer.user)
    return render(request, "notify/_items.html", {"page": page})


# How many notifications the bell's dropdown lists; "See all" opens the rest.
BELL_ITEMS = 6


@router.get("/assistant/latest", response_class=HTMLResponse)
def assistant_latest(request: Request, session: DbSession, viewer: SignedInViewer) -> Response:
    """The bell's dropdown: the latest notifications, as HTML (static/live.js fetches it)."""
    page = notification_service.feed(session, viewer.user, limit=BELL_ITEMS)
    return render(request, "notify/_bell.html", {"page": page})


def _answered(request: Request, target: str) -> Response:
    # The bell's dropdown posts with fetch and wants no page back.
    if request.headers.get("x-requested-with") == "fetch":
        return Response(status_code=204)
    return RedirectResponse(target, status_code=303)


@router.post("/assistant/read-all")
def read_all(request: Request, session: DbSession, viewer: CheckedViewer) -> Response:
    notification_service.mark_all_read(session, viewer.user)
    return _answered(request, "/assistant?notice=all-read")


@router.post("/assistant/{notification_id}/read")
def read_one(
    request: Request, session: DbSession, viewer: CheckedViewer, notification_id: int
) -> Response:
    notification_service.mark_read(session, viewer.user, [notification_id])
    return _answered(request, "/assistant")


@router.post("/assistant/{notification_id}/open")
def open_one(session: DbSession, viewer: CheckedViewer, notification_id: int) -> Response:
    """Mark the notification read and go to its email (a notice about a webhook: to the
    Webhooks settings)."""
    found = notification_service.get(session, viewer.user, notification_id)
    notification_service.mark_read(session, viewer.user, [notification_id])
    if found.message_id is None:
        return RedirectResponse("/settings/webhooks", status_code=303)
    return RedirectResponse(f"/mail/{found.message_id}", status_code=303)


@router.post("/assistant/settings")
def save_settings(
    session: DbSession,
    viewer: CheckedViewer,
    quiet_minutes: Annotated[str, Form()] = "",
    notify_tracking: Annotated[bool, Form()] = False,
) -> Response:
    try:
        data = NotificationSettings(
            notify_tracking=notify_tracking, quiet_minutes=int(quiet_minutes.strip() or "-1")
        )
    except (ValueError, ValidationError):
        return RedirectResponse("/assistant?error=settings", status_code=303)
    notification_service.save_settings(session, viewer.user, data)
    return RedirectResponse("/assistant?notice=settings", status_code=303)
