"""Consent: recording it with its proof, importing lists of it, and the recipient's own
withdrawal on the public opt-out page.

A contact's state is its latest record's; the records are its history and never
change. A refusal or a withdrawal applies at once, to every past and future email
of that contact in the organisation: the hit-time gate reads the state in each
batch's own transaction, so the next hit after the commit stores nothing personal.
With the organisation's ``delete_events_on_withdrawal``, the person's existing
events go too (the emails keep their counts, now anonymous).
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy.orm import Session

from mailbeacon.db import in_transaction
from mailbeacon.kit.addresses import parse_address
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.kit.errors import InvalidInput, NotFound
from mailbeacon.kit.validation import field_errors
from mailbeacon.models import ConsentMethod, ConsentRecord, ConsentState, Contact, Organisation
from mailbeacon.privacy import audit, repository
from mailbeacon.privacy.audit import Action, Actor
from mailbeacon.privacy.events import ConsentChanged
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import ConsentIn

# What the person reads on the opt-out page when they press its button; kept with their
# withdrawal as the text they saw.
OPT_OUT_STATEMENT = (
    "Stop tracking me: do not record when I open emails from {organisation} or which "
    "links in them I click."
)
RECIPIENT = "the recipient (opt-out page)"
MAX_IMPORT_LINES = 10_000
_NO_LONGER = (ConsentState.REFUSED, ConsentState.WITHDRAWN)


class ContactNotFound(NotFound):
    """No such contact in the caller's organisation."""


class InvalidConsent(InvalidInput):
    summary = "invalid consent"


def address_key(address: str) -> str:
    """The address as contacts are keyed (lower-cased ASCII form); InvalidInput if unreadable."""
    try:
        return parse_address(address.strip()).key
    except ValueError as exc:
        raise InvalidConsent({"address": [f"'{address[:100]}' is not an address: {exc}"]}) from exc


def find_contact(session: Session, actor: Actor, address: str) -> Contact:
    """The caller's organisation's contact at that address, or :class:`ContactNotFound`."""
    try:
        key = address_key(address)
    except InvalidInput as exc:
        raise ContactNotFound(address) from exc
    found = repository.contact(session, actor.organisation_id, key)
    if found is None:
        raise ContactNotFound(address)
    return found


def _check(change: ConsentIn) -> None:
    errors: dict[str, list[str]] = {}
    if change.state == ConsentState.UNKNOWN:
        errors["state"] = ["Record granted, refused or withdrawn."]
    if change.method == ConsentMethod.OPT_OUT_PAGE:
        errors["method"] = ["Only the recipient's own opt-out page records that method."]
    if change.state == ConsentState.GRANTED and not change.text.strip():
        errors["text"] = [
            "Give the text the person saw or heard when they consented: it is the proof."
        ]
    if change.given_at is not None and as_utc(change.given_at) > utcnow():
        errors["given_at"] = ["The consent cannot have been given in the future."]
    if errors:
        raise InvalidConsent(errors)


def set_consent(
    session: Session,
    keys: PrivacyKeys,
    actor: Actor,
    address: str,
    change: ConsentIn,
    *,
    audited: bool = True,
) -> Contact:
    """Record a consent given, refused or withdrawn for an address (a contact is made if
    there is none yet). Any user of the organisation may: they talked to the person."""
    _check(change)
    key = address_key(address)
    contact = repository.contact(session, actor.organisation_id, key)
    if contact is None:
        contact = repository.add_contact(session, actor.organisation_id, key)
    _record(
        session,
        contact,
        state=change.state,
        method=change.method,
        text=change.text.strip(),
        note=change.note.strip(),
        given_at=change.given_at,
        recorded_by=actor.label,
        user_id=actor.user.id if actor.user is not None else None,
    )
    if audited:
        audit.record(
            session,
            keys,
            actor,
            Action.CONSENT_CHANGED,
            subject=contact.email,
            detail={"state": change.state.value, "method": change.method.value},
        )
    return contact


def _record(
    session: Session,
    contact: Contact,
    *,
    state: ConsentState,
    method: ConsentMethod,
    text: str,
    note: str = "",
    given_at: datetime | None = None,
    recorded_by: str,
    user_id: int | None = None,
    network: str | None = None,
    user_agent: str = "",
) -> None:
    now = utcnow()
    previous = ConsentState(contact.consent_state)
    repository.add_consent_record(
        session,
        ConsentRecord(
            contact_id=contact.id,
            state=state,
            previous_state=previous,
            method=method,
            text=text,
            note=note,
            recorded_at=now,
            given_at=given_at,
            recorded_by_user_id=user_id,
            recorded_by=recorded_by[:320],
            network=network,
            user_agent=user_agent[:1000],
        ),
    )
    contact.consent_state = state
    contact.consent_updated_at = now
    session.flush()
    in_transaction(
        session,
        ConsentChanged(
            organisation_id=contact.organisation_id,
            address=contact.email,
            state=state,
            previous_state=previous,
            method=method,
            recorded_at=now,
            recorded_by=recorded_by[:320],
            user_id=user_id,
        ),
    )
    if state in _NO_LONGER:
        org = repository.organisation(session, contact.organisation_id)
        if org is not None and org.delete_events_on_withdrawal:
            copies = repository.contact_copies(
                session, contact.organisation_id, contact.id, contact.email
            )
            repository.forget_tracking(session, [c.id for c in copies])


# ------------------------------------------------------------------ the recipient's own page


@dataclass(frozen=True, slots=True)
class OptOutPage:
    """What the public page shows about the contact its link names."""

    contact_id: int
    organisation: Organisation
    state: ConsentState
    statement: str


def opt_out_page(session: Session, contact_id: int) -> OptOutPage | None:
    """The page's facts; None if the contact no longer exists (erased)."""
    contact = repository.contact_by_id(session, contact_id)
    if contact is None:
        return None
    org = repository.organisation(session, contact.organisation_id)
    if org is None:
        return None
    statement = OPT_OUT_STATEMENT.format(organisation=org.name)
    return OptOutPage(contact.id, org, ConsentState(contact.consent_state), statement)


def withdraw_by_recipient(
    session: Session,
    keys: PrivacyKeys,
    contact_id: int,
    *,
    network: str | None,
    user_agent: str,
) -> bool:
    """The recipient stops tracking from the opt-out page; True if this request did it,
    False if it was stopped already (a second press changes nothing).

    The record keeps the proof the page has: when, the network prefix (never the full
    address), the browser's agent, and the statement on the button.
    """
    contact = session.get(Contact, contact_id, with_for_update=True)
    if contact is None:
        raise ContactNotFound(contact_id)
    if contact.consent_state in _NO_LONGER:
        return False
    org = repository.organisation(session, contact.organisation_id)
    name = org.name if org is not None else ""
    _record(
        session,
        contact,
        state=ConsentState.WITHDRAWN,
        method=ConsentMethod.OPT_OUT_PAGE,
        text=OPT_OUT_STATEMENT.format(organisation=name),
        recorded_by=RECIPIENT,
        network=network,
        user_agent=user_agent,
    )
    actor = Actor(contact.organisation_id, None, RECIPIENT, audit.Channel.PUBLIC)
    audit.record(
        session,
        keys,
        actor,
        Action.CONSENT_WITHDRAWN_BY_RECIPIENT,
        subject=contact.email,
        detail={"network": network or ""},
    )
    return True


# ------------------------------------------------------------------ importing lists


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    text: str
    reason: str


@dataclass(slots=True)
class ImportReport:
    accepted: int = 0
    rejected: list[Rejected] = field(default_factory=list)


_COLUMNS = {"address", "state", "method", "given_at", "text", "note"}


def import_consents(
    session: Session,
    keys: PrivacyKeys,
    actor: Actor,
    data: str,
    *,
    default_text: str = "",
) -> ImportReport:
    """Record the consents of a CSV list (admins only): a header line naming the columns
    ``address`` (or ``email``) and ``state``, optionally ``method`` (default
    ``imported``), ``given_at`` (ISO 8601), ``text`` (default: ``default_text``) and
    ``note``. Each line is checked on its own; the report lists the rejected ones with
    the reason, and the accepted ones are recorded."""
    audit.require_admin(actor, "import consents")
    report = ImportReport()
    lines = data.lstrip("\ufeff").splitlines()
    if not lines or not lines[0].strip():
        raise InvalidConsent({"file": ["The list is empty."]})
    if len(lines) > MAX_IMPORT_LINES + 1:
        raise InvalidConsent(
            {"file": [f"At most {MAX_IMPORT_LINES} lines at once; split the list."]}
        )
    # Spreadsheets in many locales save with semicolons: the header line tells.
    delimiter = max(",;\t", key=lines[0].count)
    reader = csv.reader(io.StringIO("\n".join(lines)), delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    header = ["address" if h == "email" else h for h in header]
    if "address" not in header or "state" not in header:
        raise InvalidConsent(
            {"file": ["The first line must name the columns, with at least address and state."]}
        )
    unknown = [h for h in header if h and h not in _COLUMNS]
    if unknown:
        raise InvalidConsent({"file": [f"Unknown columns: {', '.join(unknown)}."]})
    for row in reader:
        number = reader.line_num  # a quoted cell may span lines
        original = lines[number - 1] if number - 1 < len(lines) else ""
        if not any(cell.strip() for cell in row):
            continue
        values = {name: (row[i].strip() if i < len(row) else "") for i, name in enumerate(header)}
        try:
            given = values.get("given_at", "")
            change = ConsentIn(
                state=ConsentState(values.get("state", "").lower()),
                method=ConsentMethod(values.get("method") or ConsentMethod.IMPORTED),
                text=values.get("text") or default_text,
                note=values.get("note", ""),
                given_at=_when(given) if given else None,
            )
            set_consent(session, keys, actor, values.get("address", ""), change)
        except ValueError as exc:
            reason = _reason(exc)
            report.rejected.append(Rejected(number, original[:300], reason))
            continue
        except InvalidInput as exc:
            report.rejected.append(Rejected(number, original[:300], str(exc)))
            continue
        report.accepted += 1
    audit.record(
        session,
        keys,
        actor,
        Action.CONSENT_IMPORTED,
        detail={"accepted": report.accepted, "rejected": len(report.rejected)},
    )
    return report


def _when(value: str) -> datetime:
    """A date or a moment as a list gives it (ISO 8601); a date alone is midnight UTC."""
    try:
        return as_utc(datetime.fromisoformat(value))
    except ValueError as exc:
        raise ValueError(f"given_at: '{value[:40]}' is not a date (use 2026-03-01)") from exc


def _reason(exc: ValueError) -> str:
    if isinstance(exc, ValidationError):
        return "; ".join(f"{k}: {' '.join(v)}" for k, v in field_errors(exc).items())
    text = str(exc)
    if "is not a valid ConsentState" in text:
        return "state: use granted, refused or withdrawn"
    if "is not a valid ConsentMethod" in text:
        return "method: use web_form, email_reply, verbal or imported"
    return text
