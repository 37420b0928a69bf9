"""Pages: Settings > Webhooks (the endpoints, adding one with its secret shown once) and one
endpoint's page (its delivery log, "Send test event", enable, disable, delete)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mailbeacon.config import Settings
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.cursors import InvalidCursor
from mailbeacon.kit.errors import InvalidInput
from mailbeacon.models import User, WebhookScope
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided, render
from mailbeacon.webhooks.events import SUBSCRIBABLE, EventType
from mailbeacon.webhooks.schemas import EndpointIn, EndpointPatch
from mailbeacon.webhooks.service import webhook_service

router = APIRouter(include_in_schema=False)

# Notices are chosen by key, never echoed from the query string.
NOTICES = {
    "test": "A test event is on its way; its delivery shows below.",
    "enabled": "The endpoint is enabled again.",
    "disabled": "The endpoint is disabled: nothing more is sent to it.",
    "deleted": "The endpoint is deleted.",
    "saved": "The endpoint is saved.",
}
DEFAULT_EVENTS = [
    str(EventType.MESSAGE_SENT),
    str(EventType.COPY_OPENED),
    str(EventType.LINK_CLICKED),
    str(EventType.REPLY_RECEIVED),
]


def _list_page(
    request: Request,
    session: Session,
    user: User,
    *,
    new_secret: str = "",
    errors: dict[str, list[str]] | None = None,
    form: dict[str, object] | None = None,
    notice: str = "",
    status_code: int = 200,
) -> HTMLResponse:
    return render(
        request,
        "settings/webhooks.html",
        {
            "active": "settings",
            "section": "webhooks",
            "endpoints": webhook_service.list_endpoints(session, user),
            "new_secret": new_secret,
            "errors": errors or {},
            "form": form or {"url": "", "description": "", "events": DEFAULT_EVENTS},
            "choices": [(str(k), v) for k, v in SUBSCRIBABLE.items()],
            "is_admin": user.is_admin,
            "notice": notice,
        },
        status_code=status_code,
    )


@router.get("/settings/webhooks", response_class=HTMLResponse)
def webhooks(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _list_page(request, session, viewer.user, notice=NOTICES.get(notice, ""))


@router.post("/settings/webhooks", response_class=HTMLResponse)
def create_webhook(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    url: Annotated[str, Form()] = "",
    description: Annotated[str, Form()] = "",
    events: Annotated[list[str] | None, Form()] = None,
    every_open: Annotated[bool, Form()] = False,
    organisation: Annotated[bool, Form()] = False,
) -> Response:
    form = {"url": url, "description": description, "events": events or [], "every": every_open}
    try:
        try:
            data = EndpointIn(
                url=url,
                description=description,
                events=events or [],  # validated here
                every_open=every_open,
                scope=WebhookScope.ORGANISATION if organisation else WebhookScope.USER,
            )
        except ValidationError as exc:
            raise InvalidInput(_field_errors(exc)) from exc
        _, secret = webhook_service.create_endpoint(
            session,
            viewer.user,
            data,
            settings=provided(request, Settings),
            credentials=provided(request, CredentialBox),
        )
    except InvalidInput as exc:
        return _list_page(
            request, session, viewer.user, errors=exc.errors, form=form, status_code=422
        )
    # Shown once, on this response; only its sealed form is stored.
    return _list_page(request, session, viewer.user, new_secret=secret)


def _field_errors(exc: ValidationError) -> dict[str, list[str]]:
    words = {
        "url": "Enter the receiver's URL (at most 2000 characters).",
        "description": "The description is at most 200 characters.",
        "events": "Choose at least one event.",
    }
    errors: dict[str, list[str]] = {}
    for error in exc.errors():
        field = str(error["loc"][0]) if error.get("loc") else "url"
        errors.setdefault(field, [words.get(field, str(error.get("msg")))])
    return errors


@router.get("/settings/webhooks/{endpoint_id}", response_class=HTMLResponse)
def webhook_page(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    endpoint_id: int,
    before: str = "",
    notice: str = "",
) -> Response:
    endpoint = webhook_service.get_endpoint(session, viewer.user, endpoint_id)
    try:
        log = webhook_service.deliveries(session, viewer.user, endpoint_id, before=before or None)
    except InvalidCursor:
        log = webhook_service.deliveries(session, viewer.user, endpoint_id)
    return render(
        request,
        "settings/webhook.html",
        {
            "active": "settings",
            "section": "webhooks",
            "endpoint": endpoint,
            "log": log,
            "choices": dict((str(k), v) for k, v in SUBSCRIBABLE.items()),
            "notice": NOTICES.get(notice, ""),
        },
    )


@router.post("/settings/webhooks/{endpoint_id}/test")
def send_test(session: DbSession, viewer: CheckedViewer, endpoint_id: int) -> Response:
    webhook_service.send_test(session, viewer.user, endpoint_id)
    return RedirectResponse(f"/settings/webhooks/{endpoint_id}?notice=test", status_code=303)


@router.post("/settings/webhooks/{endpoint_id}/enable")
def enable(
    request: Request, session: DbSession, viewer: CheckedViewer, endpoint_id: int
) -> Response:
    webhook_service.update_endpoint(
        session,
        viewer.user,
        endpoint_id,
        EndpointPatch(enabled=True),
        settings=provided(request, Settings),
    )
    return RedirectResponse(f"/settings/webhooks/{endpoint_id}?notice=enabled", status_code=303)


@router.post("/settings/webhooks/{endpoint_id}/disable")
def disable(
    request: Request, session: DbSession, viewer: CheckedViewer, endpoint_id: int
) -> Response:
    webhook_service.update_endpoint(
        session,
        viewer.user,
        endpoint_id,
        EndpointPatch(enabled=False),
        settings=provided(request, Settings),
    )
    return RedirectResponse(f"/settings/webhooks/{endpoint_id}?notice=disabled", status_code=303)


@router.post("/settings/webhooks/{endpoint_id}/delete")
def delete(session: DbSession, viewer: CheckedViewer, endpoint_id: int) -> Response:
    webhook_service.delete_endpoint(session, viewer.user, endpoint_id)
    return RedirectResponse("/settings/webhooks?notice=deleted", status_code=303)
