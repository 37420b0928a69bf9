"""The audit log: every view of a contact's tracking data, every consent or policy change.

An entry says who (the user, or the recipient on the opt-out page, or the
command line), when, through what (web, api, cli, public), what, and about
whom. Only admins read it (and export it); nothing edits it, except that
erasing a contact blanks the address in the entries about them and keeps a
keyed stand-in (``PrivacyKeys.address_key``) so the log still holds together.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.errors import Forbidden
from mailbeacon.models import AuditEntry, User
from mailbeacon.privacy import repository
from mailbeacon.privacy.keys import PrivacyKeys

AUDIT_PAGE = 100


class Channel(StrEnum):
    WEB = "web"
    API = "api"
    CLI = "cli"
    PUBLIC = "public"  # the recipient, on the public opt-out page


class Action(StrEnum):
    CONTACT_VIEWED = "contact.viewed"  # the contact's page
    TIMELINE_VIEWED = "contact.timeline_viewed"  # the contact's events, page by page
    CONTACT_READ = "contact.read"  # the JSON API's contact detail
    CONTACT_EXPORTED = "contact.exported"
    CONTACT_ERASED = "contact.erased"
    CONSENT_CHANGED = "consent.changed"
    CONSENT_IMPORTED = "consent.imported"
    CONSENT_WITHDRAWN_BY_RECIPIENT = "consent.withdrawn_by_recipient"
    POLICY_CHANGED = "policy.changed"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who does something, as the audit log names them."""

    organisation_id: int
    user: User | None
    label: str
    channel: Channel

    @classmethod
    def of(cls, user: User, channel: Channel) -> Actor:
        return cls(user.organisation_id, user, user.email, channel)

    @property
    def is_admin(self) -> bool:
        """The command line acts as the operator, who administers every organisation."""
        return self.channel == Channel.CLI or (self.user is not None and self.user.is_admin)


def require_admin(actor: Actor, what: str) -> None:
    if not actor.is_admin:
        raise Forbidden(f"Only an admin of your organisation may {what}.")


def record(
    session: Session,
    keys: PrivacyKeys,
    actor: Actor,
    action: Action,
    *,
    subject: str = "",
    detail: dict[str, Any] | None = None,
    at: datetime | None = None,
    subject_key: str | None = None,
) -> None:
    """Add an entry to the organisation's log, in the caller's unit of work."""
    if subject_key is None:
        subject_key = keys.address_key(actor.organisation_id, subject) if subject else ""
    repository.add_audit_entry(
        session,
        {
            "organisation_id": actor.organisation_id,
            "at": at or utcnow(),
            "actor_user_id": actor.user.id if actor.user is not None else None,
            "actor": actor.label[:320],
            "channel": actor.channel.value,
            "action": action.value,
            "subject": subject[:320],
            "subject_key": subject_key,
            "detail": json.dumps(detail, sort_keys=True, default=str) if detail else "",
        },
    )


def entries(
    session: Session, actor: Actor, *, before: tuple[datetime, int] | None = None
) -> list[AuditEntry]:
    """A page of the log, newest first (admins only)."""
    require_admin(actor, "read the audit log")
    return repository.audit_entries(
        session, actor.organisation_id, before=before, limit=AUDIT_PAGE + 1
    )


def export_csv(session: Session, actor: Actor) -> str:
    """The whole log as CSV, newest first (admins only); exporting it is not itself logged
    as a view of anyone's data: it holds none beyond the addresses it names."""
    require_admin(actor, "export the audit log")
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["at", "actor", "channel", "action", "subject", "detail"])
    for entry in repository.audit_entries(session, actor.organisation_id, before=None, limit=None):
        writer.writerow(
            [
                entry.at.isoformat(),
                _cell(entry.actor),
                entry.channel,
                entry.action,
                _cell(entry.subject),
                _cell(entry.detail),
            ]
        )
    return out.getvalue()


def _cell(value: str) -> str:
    """A value a spreadsheet will not run as a formula (OWASP: CSV injection)."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value
