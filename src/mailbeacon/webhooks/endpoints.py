"""JSON API of webhooks: endpoints, their delivery logs, test events.

Managing webhooks decides where the user's tracking data goes: an API token needs
the ``admin`` scope for every operation here, reads included (``app.TOKEN_SCOPES``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response

from mailbeacon.config import Settings
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.ids import SmallRowId
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided
from mailbeacon.web.routing import ApiRoute
from mailbeacon.webhooks.schemas import (
    DeliveryPage,
    EndpointCreatedOut,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
)
from mailbeacon.webhooks.service import LOG_PAGE, MAX_LOG_PAGE, endpoint_out, webhook_service

router = APIRouter(prefix="/api", tags=["webhooks"], route_class=ApiRoute)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such webhook endpoint among yours"}
}


@router.get("/webhooks", response_model=list[EndpointOut])
def list_webhooks(session: DbSession, viewer: SignedInViewer) -> list[EndpointOut]:
    """Your webhook endpoints (and, for an admin, the organisation's). Secrets are never
    shown again after creation."""
    return [endpoint_out(e) for e in webhook_service.list_endpoints(session, viewer.user)]


@router.post(
    "/webhooks",
    status_code=201,
    response_model=EndpointCreatedOut,
    responses={403: {"description": "Only an admin may add an organisation's endpoint"}},
)
def create_webhook(
    request: Request,
    response: Response,
    session: DbSession,
    viewer: CheckedViewer,
    body: EndpointIn,
) -> EndpointCreatedOut:
    """Add an endpoint. The answer carries its signing secret, once: keep it."""
    endpoint, secret = webhook_service.create_endpoint(
        session,
        viewer.user,
        body,
        settings=provided(request, Settings),
        credentials=provided(request, CredentialBox),
    )
    response.headers["location"] = f"/api/webhooks/{endpoint.id}"
    return EndpointCreatedOut(**endpoint_out(endpoint).model_dump(), secret=secret)


@router.get("/webhooks/{webhook_id}", response_model=EndpointOut, responses=_NOT_FOUND)
def get_webhook(session: DbSession, viewer: SignedInViewer, webhook_id: SmallRowId) -> EndpointOut:
    """One endpoint: where it points, what it hears, whether it is enabled and why not."""
    return endpoint_out(webhook_service.get_endpoint(session, viewer.user, webhook_id))


@router.patch("/webhooks/{webhook_id}", response_model=EndpointOut, responses=_NOT_FOUND)
def update_webhook(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    webhook_id: SmallRowId,
    body: EndpointPatch,
) -> EndpointOut:
    """Change an endpoint; ``enabled: true`` resumes one that was disabled."""
    endpoint = webhook_service.update_endpoint(
        session, viewer.user, webhook_id, body, settings=provided(request, Settings)
    )
    return endpoint_out(endpoint)


@router.delete("/webhooks/{webhook_id}", status_code=204, responses=_NOT_FOUND)
def delete_webhook(session: DbSession, viewer: CheckedViewer, webhook_id: SmallRowId) -> Response:
    """Remove an endpoint and its delivery log."""
    webhook_service.delete_endpoint(session, viewer.user, webhook_id)
    return Response(status_code=204)


@router.get(
    "/webhooks/{webhook_id}/deliveries",
    response_model=DeliveryPage,
    responses={
        **_NOT_FOUND,
        400: {"description": "The cursor was not handed out by this server"},
    },
)
def list_deliveries(
    session: DbSession,
    viewer: SignedInViewer,
    webhook_id: SmallRowId,
    before: Annotated[str | None, Query(description="older_cursor of the previous page")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LOG_PAGE)] = LOG_PAGE,
) -> DeliveryPage:
    """The endpoint's delivery log, newest first: each event's status, the receiver's last
    answer, when it was tried and when it is tried next."""
    return webhook_service.deliveries(session, viewer.user, webhook_id, before=before, limit=limit)


@router.post(
    "/webhooks/{webhook_id}/test",
    status_code=202,
    response_model=DeliveryPage,
    responses=_NOT_FOUND,
)
def send_test_event(
    session: DbSession, viewer: CheckedViewer, webhook_id: SmallRowId
) -> DeliveryPage:
    """Queue a ``webhook.test`` event for this endpoint; it shows in the delivery log."""
    webhook_service.send_test(session, viewer.user, webhook_id)
    session.flush()
    return webhook_service.deliveries(session, viewer.user, webhook_id, limit=1)
