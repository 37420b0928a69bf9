"""Pages: Contacts (list, search, one contact with consent and tracking, import), and for
admins Settings > Privacy and Settings > Audit log.

Every page works without JavaScript. Each view of a contact's tracking data is
audited by the service that reads it.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Request, UploadFile
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.kit.errors import InvalidInput
from mailbeacon.kit.validation import field_errors
from mailbeacon.models import ConsentMethod, ConsentState, TrackingMode
from mailbeacon.privacy import audit, consent, contacts, erasure, policy
from mailbeacon.privacy.audit import Action, Actor, Channel
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import ConsentIn, PolicyIn
from mailbeacon.web.deps import (
    CheckedViewer,
    DbSession,
    SignedInViewer,
    Viewer,
    provided,
    render,
    writing_unit,
)

router = APIRouter(include_in_schema=False)

CSV_LIMIT_BYTES = 200_000
NOTICES = {
    "consent": "The consent was recorded.",
    "erased": "The contact was erased: nothing about them is kept any more.",
    "saved": "Privacy settings saved.",
}
STATE_WORDS = {
    ConsentState.UNKNOWN: "unknown",
    ConsentState.GRANTED: "granted",
    ConsentState.REFUSED: "refused",
    ConsentState.WITHDRAWN: "withdrawn",
}
METHOD_WORDS = {
    ConsentMethod.WEB_FORM: "web form",
    ConsentMethod.EMAIL_REPLY: "email reply",
    ConsentMethod.VERBAL: "verbally",
    ConsentMethod.IMPORTED: "imported",
    ConsentMethod.OPT_OUT_PAGE: "opt-out page",
}
RECORDABLE_METHODS = [m for m in ConsentMethod if m != ConsentMethod.OPT_OUT_PAGE]
MODE_CHOICES = [
    (TrackingMode.INDIVIDUAL.value, "Individual", "opens and clicks per recipient"),
    (TrackingMode.AGGREGATE.value, "Aggregate", "anonymous counts per email, never by whom"),
    (TrackingMode.OFF.value, "Off", "no pixel, no link wrapping, for everyone"),
]


def _actor(viewer: Viewer) -> Actor:
    return Actor.of(viewer.user, Channel.WEB)


def _keys(request: Request) -> PrivacyKeys:
    return provided(request, PrivacyKeys)


def _page(request: Request, name: str, context: dict[str, Any], status_code: int = 200) -> Response:
    context.setdefault("state_words", STATE_WORDS)
    context.setdefault("method_words", METHOD_WORDS)
    return render(request, name, context, status_code=status_code)


# ------------------------------------------------------------------ contacts


@router.get("/contacts", response_class=HTMLResponse)
def contact_list(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    q: str = "",
    state: str = "",
    before: str = "",
) -> Response:
    chosen = ConsentState(state) if state in set(ConsentState) else None
    page = contacts.contact_page(session, _actor(viewer), q=q, state=chosen, before=before or None)
    return _page(
        request,
        "privacy/contacts.html",
        {
            "active": "contacts",
            "page": page,
            "q": q,
            "state": chosen.value if chosen else "",
            "states": list(ConsentState),
        },
    )


def _contact_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    address: str,
    *,
    errors: dict[str, list[str]] | None = None,
    values: dict[str, str] | None = None,
    notice: str = "",
    status_code: int = 200,
) -> Response:
    detail = contacts.contact_detail(session, _keys(request), _actor(viewer), address)
    return _page(
        request,
        "privacy/contact.html",
        {
            "active": "contacts",
            "contact": detail,
            "errors": errors or {},
            "values": values or {"state": "granted", "method": "web_form", "text": "", "note": ""},
            "methods": RECORDABLE_METHODS,
            "notice": NOTICES.get(notice, ""),
            "is_admin": viewer.user.is_admin,
        },
        status_code=status_code,
    )


@router.get("/contacts/import", response_class=HTMLResponse)
def import_form(request: Request, viewer: SignedInViewer) -> Response:
    audit.require_admin(_actor(viewer), "import consents")
    return _page(request, "privacy/import.html", {"active": "contacts", "report": None})


@router.post("/contacts/import", response_class=HTMLResponse)
async def import_consents(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    csv_text: Annotated[str, Form()] = "",
    default_text: Annotated[str, Form(max_length=5000)] = "",
    csv_file: UploadFile | None = None,
) -> Response:
    """Record the consents of a CSV list; the report lists each rejected line and why."""
    data = csv_text
    if csv_file is not None and csv_file.filename:
        raw = await csv_file.read(CSV_LIMIT_BYTES + 1)
        data = raw[:CSV_LIMIT_BYTES].decode("utf-8", errors="replace")
    errors: dict[str, list[str]] = {}
    report = None
    try:
        report = consent.import_consents(
            session, _keys(request), _actor(viewer), data, default_text=default_text
        )
    except InvalidInput as exc:
        errors = exc.errors
    return _page(
        request,
        "privacy/import.html",
        {
            "active": "contacts",
            "report": report,
            "errors": errors,
            "csv_text": csv_text,
            "default_text": default_text,
        },
        status_code=422 if errors else 200,
    )


@router.get(
    "/contacts/{address}", response_class=HTMLResponse, dependencies=[Depends(writing_unit)]
)
def contact_detail(
    request: Request, session: DbSession, viewer: SignedInViewer, address: str, notice: str = ""
) -> Response:
    return _contact_page(request, session, viewer, address, notice=notice)


@router.get(
    "/contacts/{address}/timeline",
    response_class=HTMLResponse,
    dependencies=[Depends(writing_unit)],
)
def contact_timeline(
    request: Request, session: DbSession, viewer: SignedInViewer, address: str, before: str = ""
) -> Response:
    found, events, cursor = contacts.contact_timeline(
        session, _keys(request), _actor(viewer), address, before=before or None
    )
    return _page(
        request,
        "privacy/timeline.html",
        {"active": "contacts", "contact": found, "events": events, "older_cursor": cursor},
    )


@router.post("/contacts/{address}/consent", response_class=HTMLResponse)
def record_consent(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    address: str,
    state: Annotated[str, Form()] = "",
    method: Annotated[str, Form()] = "",
    text: Annotated[str, Form()] = "",
    note: Annotated[str, Form()] = "",
) -> Response:
    values = {"state": state, "method": method, "text": text, "note": note}
    contact = consent.find_contact(session, _actor(viewer), address)
    try:
        change = ConsentIn.model_validate(
            {"state": state, "method": method, "text": text, "note": note}
        )
        consent.set_consent(session, _keys(request), _actor(viewer), contact.email, change)
    except ValidationError as exc:
        errors = field_errors(exc)
    except InvalidInput as exc:
        errors = exc.errors
    else:
        return RedirectResponse(f"/contacts/{contact.email}?notice=consent", status_code=303)
    return _contact_page(
        request, session, viewer, address, errors=errors, values=values, status_code=422
    )


@router.get("/contacts/{address}/export", dependencies=[Depends(writing_unit)])
def export_contact(
    request: Request, session: DbSession, viewer: SignedInViewer, address: str
) -> Response:
    """The contact's data as a JSON file (admins only)."""
    data = erasure.export_contact(session, _keys(request), _actor(viewer), address)
    name = "contact-" + "".join(ch if ch.isalnum() else "-" for ch in data["contact"]["address"])
    return Response(
        json.dumps(data, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={"content-disposition": f'attachment; filename="{name}.json"'},
    )


@router.post("/contacts/{address}/erase")
def erase_contact(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    address: str,
    confirm: Annotated[str, Form()] = "",
) -> Response:
    """Erase the contact (admins only), once its address was typed again to confirm."""
    actor = _actor(viewer)
    audit.require_admin(actor, "erase a contact")
    if confirm.strip().lower() != address.strip().lower():
        return _contact_page(
            request,
            session,
            viewer,
            address,
            errors={"confirm": ["Type the contact's address to confirm the erasure."]},
            status_code=422,
        )
    erasure.erase_contact(session, _keys(request), actor, address)
    return RedirectResponse("/contacts?notice=erased", status_code=303)


# ------------------------------------------------------------------ Settings > Privacy


def _settings_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    *,
    errors: dict[str, list[str]] | None = None,
    notice: str = "",
    status_code: int = 200,
) -> Response:
    current = policy.read_policy(session, _actor(viewer))
    return _page(
        request,
        "privacy/settings.html",
        {
            "active": "settings",
            "section": "privacy",
            "policy": current,
            "modes": MODE_CHOICES,
            "errors": errors or {},
            "notice": NOTICES.get(notice, ""),
        },
        status_code=status_code,
    )


@router.get("/settings/privacy", response_class=HTMLResponse)
def privacy_settings(
    request: Request, session: DbSession, viewer: SignedInViewer, notice: str = ""
) -> Response:
    return _settings_page(request, session, viewer, notice=notice)


@router.post("/settings/privacy", response_class=HTMLResponse)
def save_privacy_settings(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    tracking: Annotated[str, Form()] = "",
    consent_required: Annotated[bool, Form()] = False,
    opt_out_footer: Annotated[bool, Form()] = False,
    retention_days: Annotated[str, Form()] = "",
    store_network: Annotated[bool, Form()] = False,
    delete_events_on_withdrawal: Annotated[bool, Form()] = False,
    privacy_contact: Annotated[str, Form()] = "",
) -> Response:
    actor = _actor(viewer)
    audit.require_admin(actor, "change the privacy settings")
    days = retention_days.strip()
    if not days.isdigit() or len(days) > 6:
        return _settings_page(
            request,
            session,
            viewer,
            errors={"retention_days": ["Give a whole number of days, from 1 to 3650."]},
            status_code=422,
        )
    try:
        data = PolicyIn.model_validate(
            {
                "tracking": tracking,
                "consent_required": consent_required,
                "opt_out_footer": opt_out_footer,
                "retention_days": int(days),
                "store_network": store_network,
                "delete_events_on_withdrawal": delete_events_on_withdrawal,
                "privacy_contact": privacy_contact,
            }
        )
    except ValidationError as exc:
        return _settings_page(request, session, viewer, errors=field_errors(exc), status_code=422)
    policy.update_policy(session, _keys(request), actor, data)
    return RedirectResponse("/settings/privacy?notice=saved", status_code=303)


# ------------------------------------------------------------------ Settings > Audit log


@router.get("/settings/audit", response_class=HTMLResponse)
def audit_log(
    request: Request, session: DbSession, viewer: SignedInViewer, before: str = ""
) -> Response:
    found = audit.entries(session, _actor(viewer), before=decode_cursor(before or None))
    items = found[: audit.AUDIT_PAGE]
    last = items[-1] if items and len(found) > audit.AUDIT_PAGE else None
    return _page(
        request,
        "privacy/audit.html",
        {
            "active": "settings",
            "section": "audit",
            "entries": items,
            "older_cursor": encode_cursor(last.at, last.id) if last else None,
            "actions": Action,
        },
    )


@router.get("/settings/audit.csv")
def audit_export(session: DbSession, viewer: SignedInViewer) -> Response:
    return Response(
        audit.export_csv(session, _actor(viewer)),
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": 'attachment; filename="audit-log.csv"'},
    )
