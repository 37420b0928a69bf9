"""JSON API of the privacy domain: contacts and their consent, a person's rights (export,
erasure), the organisation's policy and the audit log.

Contacts are the organisation's; a contact's tracking data in ``GET
/api/contacts/{address}`` is the caller's own emails' only, and every such read
is audited. Export, erasure, the policy and the audit log are for admins (a
member gets 403), and with an API token need its ``admin`` scope.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field, field_validator

from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.models import ConsentState
from mailbeacon.privacy import audit, consent, contacts, erasure, policy
from mailbeacon.privacy.audit import Action, Actor, Channel
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import (
    AuditEntryOut,
    AuditPageOut,
    ConsentIn,
    ContactDetailOut,
    ContactEventOut,
    ContactOut,
    ContactPageOut,
    ErasureOut,
    ImportRejectOut,
    ImportReportOut,
    PolicyIn,
    PolicyOut,
    storable,
)
from mailbeacon.web.deps import (
    CheckedViewer,
    DbSession,
    SignedInViewer,
    Viewer,
    provided,
    writing_unit,
)
from mailbeacon.web.routing import ApiRoute

router = APIRouter(prefix="/api", tags=["privacy"], route_class=ApiRoute)

_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"description": "No such contact in your organisation"}
}
_ADMIN: dict[int | str, dict[str, Any]] = {403: {"description": "Admins only"}}


def _actor(viewer: Viewer) -> Actor:
    return Actor.of(viewer.user, Channel.API)


def _keys(request: Request) -> PrivacyKeys:
    return provided(request, PrivacyKeys)


class ImportIn(BaseModel):
    csv: str = Field(
        max_length=200_000,
        description="A header line naming the columns address and state (optionally "
        "method, given_at, text, note), then one consent per line",
    )
    default_text: str = Field(
        default="", max_length=5000, description="The consent text for lines without one"
    )

    _storable = field_validator("csv", "default_text")(storable)


class ContactEventsOut(BaseModel):
    contact: ContactOut
    items: list[ContactEventOut]
    older_cursor: str | None


@router.get("/contacts", response_model=ContactPageOut)
def list_contacts(
    session: DbSession,
    viewer: SignedInViewer,
    q: Annotated[str, Query(max_length=200)] = "",
    state: ConsentState | None = None,
    before: Annotated[str | None, Query(max_length=100)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> ContactPageOut:
    """Your organisation's contacts with their consent state, newest first."""
    return contacts.contact_page(
        session, _actor(viewer), q=q, state=state, before=before, limit=limit
    )


@router.post(
    "/contacts/import",
    response_model=ImportReportOut,
    responses={**_ADMIN, 422: {"description": "The list cannot be read at all"}},
)
def import_consents(
    request: Request, session: DbSession, viewer: CheckedViewer, body: ImportIn
) -> ImportReportOut:
    """Record a CSV list of consents; the report lists each rejected line and why."""
    report = consent.import_consents(
        session, _keys(request), _actor(viewer), body.csv, default_text=body.default_text
    )
    return ImportReportOut(
        accepted=report.accepted,
        rejected=[
            ImportRejectOut(line=r.line, text=r.text, reason=r.reason) for r in report.rejected
        ],
    )


@router.get(
    "/contacts/{address}",
    response_model=ContactDetailOut,
    responses=_NOT_FOUND,
    dependencies=[Depends(writing_unit)],
)
def get_contact(
    request: Request, session: DbSession, viewer: SignedInViewer, address: str
) -> ContactDetailOut:
    """A contact: consent with its history, your emails to them and their events (audited)."""
    return contacts.contact_detail(
        session, _keys(request), _actor(viewer), address, action=Action.CONTACT_READ
    )


@router.get(
    "/contacts/{address}/events",
    response_model=ContactEventsOut,
    responses=_NOT_FOUND,
    dependencies=[Depends(writing_unit)],
)
def contact_events(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    address: str,
    before: Annotated[str | None, Query(max_length=100)] = None,
) -> ContactEventsOut:
    """The contact's events in your emails, newest first, a page at a time (audited)."""
    found, events, cursor = contacts.contact_timeline(
        session, _keys(request), _actor(viewer), address, before=before
    )
    return ContactEventsOut(contact=found, items=events, older_cursor=cursor)


@router.put(
    "/contacts/{address}/consent",
    response_model=ContactOut,
    responses={422: {"description": "Invalid consent, with messages per field"}},
)
def put_consent(
    request: Request, session: DbSession, viewer: CheckedViewer, address: str, body: ConsentIn
) -> ContactOut:
    """Record a consent given, refused or withdrawn, with what proves it."""
    found = consent.set_consent(session, _keys(request), _actor(viewer), address, body)
    return contacts.contact_out(found)


@router.get(
    "/contacts/{address}/export",
    responses={**_NOT_FOUND, **_ADMIN},
    dependencies=[Depends(writing_unit)],
)
def export_contact(
    request: Request, session: DbSession, viewer: SignedInViewer, address: str
) -> dict[str, Any]:
    """Everything your organisation holds about the person (admins only; audited)."""
    return erasure.export_contact(session, _keys(request), _actor(viewer), address)


@router.delete("/contacts/{address}", response_model=ErasureOut, responses={**_NOT_FOUND, **_ADMIN})
def erase_contact(
    request: Request, session: DbSession, viewer: CheckedViewer, address: str
) -> ErasureOut:
    """Erase the person (admins only): the emails keep their anonymous counts."""
    return erasure.erase_contact(session, _keys(request), _actor(viewer), address)


@router.get("/org/privacy", response_model=PolicyOut, responses=_ADMIN)
def get_policy(session: DbSession, viewer: SignedInViewer) -> PolicyOut:
    """Your organisation's privacy policy (admins only)."""
    return policy.read_policy(session, _actor(viewer))


@router.put("/org/privacy", response_model=PolicyOut, responses=_ADMIN)
def put_policy(
    request: Request, session: DbSession, viewer: CheckedViewer, body: PolicyIn
) -> PolicyOut:
    """Change the policy (admins only); fields left out stay as they are. Audited."""
    return policy.update_policy(session, _keys(request), _actor(viewer), body)


@router.get("/audit", response_model=AuditPageOut, responses=_ADMIN)
def audit_log(
    session: DbSession,
    viewer: SignedInViewer,
    before: Annotated[str | None, Query(max_length=100)] = None,
) -> AuditPageOut:
    """The audit log, newest first (admins only)."""
    found = audit.entries(session, _actor(viewer), before=decode_cursor(before))
    items = found[: audit.AUDIT_PAGE]
    last = items[-1] if items and len(found) > audit.AUDIT_PAGE else None
    return AuditPageOut(
        items=[AuditEntryOut.model_validate(e, from_attributes=True) for e in items],
        older_cursor=encode_cursor(last.at, last.id) if last else None,
    )


@router.get(
    "/audit/export",
    responses={**_ADMIN, 200: {"content": {"text/csv": {}}, "description": "The whole log"}},
)
def audit_export(session: DbSession, viewer: SignedInViewer) -> Response:
    """The whole audit log as CSV (admins only)."""
    return Response(audit.export_csv(session, _actor(viewer)), media_type="text/csv; charset=utf-8")
