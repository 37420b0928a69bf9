"""JSON API of notifications, and the live stream behind the bell and the Mail tab.

``GET /api/notifications/stream`` is a server-sent event stream of one user's
updates. It carries counts and ids only; what changed is read back through the
user-scoped API, so the stream can never show anyone else's data. Its events
(each a JSON object in ``data``):

* ``{"type": "unread", "count": N}``: on connect, and whenever the count may have changed;
* ``{"type": "activity", "message_ids": [...]}``: these emails have new tracking
  events (``null``: reload whatever is shown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import StreamingResponse

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.ids import RowId
from mailbeacon.notify.live import LiveBroker
from mailbeacon.notify.schemas import (
    MarkRead,
    NotificationPage,
    NotificationSettings,
    UnreadCount,
)
from mailbeacon.notify.service import notification_service
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided
from mailbeacon.web.routing import ApiRoute

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/notifications", tags=["notifications"], route_class=ApiRoute)

# How long a browser waits before reconnecting a stream that ended.
RETRY_MILLISECONDS = 1000
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such notification among yours"}
}


def _unread(database: Database, user_id: int) -> int:
    with database.unit_of_work(immediate=False) as session:
        return notification_service.unread_count(session, user_id)


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


async def live_events(
    live: LiveBroker, database: Database, settings: Settings, user_id: int
) -> AsyncIterator[str]:
    """The stream of one user's updates, until it times out or the server stops."""
    # Subscribe before the first count, so nothing that happens in between is missed.
    subscription = live.subscribe(user_id)
    try:
        unread = await asyncio.to_thread(_unread, database, user_id)
        yield f"retry: {RETRY_MILLISECONDS}\n" + _sse({"type": "unread", "count": unread})
        deadline = time.monotonic() + settings.LIVE_STREAM_SECONDS
        while (left := deadline - time.monotonic()) > 0:
            activity = await subscription.next(min(settings.LIVE_HEARTBEAT_SECONDS, left))
            if activity is not None and activity.closed:
                break
            # A recount on every heartbeat too: it catches what another process
            # changed where no wake can reach (several processes on SQLite).
            count = await asyncio.to_thread(_unread, database, user_id)
            if activity is None and count == unread:
                yield ": keep-alive\n\n"
                continue
            if activity is None or count != unread or activity.message_ids or activity.everything:
                yield _sse({"type": "unread", "count": count})
            unread = count
            if activity is not None and (activity.everything or activity.message_ids):
                ids = None if activity.everything else sorted(activity.message_ids)
                yield _sse({"type": "activity", "message_ids": ids})
    except Exception:
        # The database went away: end the stream; the browser comes back by itself.
        log.warning("live stream of user %s ended early", user_id, exc_info=True)
    finally:
        live.unsubscribe(subscription)


@router.get(
    "/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "Server-sent events: unread counts and emails with new activity",
        }
    },
)
async def stream(request: Request, viewer: SignedInViewer) -> StreamingResponse:
    """Live updates for the signed-in user: the bell's count and emails with new activity."""
    return StreamingResponse(
        live_events(
            provided(request, LiveBroker),
            provided(request, Database),
            provided(request, Settings),
            viewer.user.id,
        ),
        media_type="text/event-stream",
        # Proxies must pass each event on at once.
        headers={"cache-control": "no-store", "x-accel-buffering": "no"},
    )


@router.get("", response_model=NotificationPage, responses={400: {"description": "Bad cursor"}})
def list_notifications(
    session: DbSession,
    viewer: SignedInViewer,
    before: Annotated[str | None, Query(description="next_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> NotificationPage:
    """Your notifications, newest first, and how many are unread."""
    return notification_service.feed(session, viewer.user, before, limit)


@router.get("/unread-count", response_model=UnreadCount)
def unread_count(session: DbSession, viewer: SignedInViewer) -> UnreadCount:
    """How many of your notifications are unread (the bell)."""
    return UnreadCount(count=notification_service.unread_count(session, viewer.user.id))


@router.post("/read", response_model=UnreadCount, responses=_NOT_FOUND)
def mark_read(session: DbSession, viewer: CheckedViewer, body: MarkRead) -> UnreadCount:
    """Mark some of your notifications read; any id that is not yours fails the whole call."""
    notification_service.mark_read(session, viewer.user, body.ids)
    return UnreadCount(count=notification_service.unread_count(session, viewer.user.id))


@router.post("/read-all", response_model=UnreadCount)
def mark_all_read(session: DbSession, viewer: CheckedViewer) -> UnreadCount:
    """Mark all your notifications read."""
    notification_service.mark_all_read(session, viewer.user)
    return UnreadCount(count=0)


@router.post("/{notification_id}/read", response_model=UnreadCount, responses=_NOT_FOUND)
def mark_one_read(session: DbSession, viewer: CheckedViewer, notification_id: RowId) -> UnreadCount:
    """Mark one of your notifications read."""
    notification_service.mark_read(session, viewer.user, [notification_id])
    return UnreadCount(count=notification_service.unread_count(session, viewer.user.id))


@router.get("/settings", response_model=NotificationSettings)
def get_settings(viewer: SignedInViewer) -> NotificationSettings:
    """Whether you get notifications, and the quiet period that collapses repeated opens."""
    return notification_service.settings(viewer.user)


@router.put("/settings", response_model=NotificationSettings)
def put_settings(
    session: DbSession, viewer: CheckedViewer, body: NotificationSettings
) -> NotificationSettings:
    """Change whether you get notifications, and the quiet period."""
    return notification_service.save_settings(session, viewer.user, body)
