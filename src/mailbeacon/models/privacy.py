"""Privacy: each organisation's tracking policy, consent records with their proof, the
audit log, erased addresses, and the anonymous hits already counted."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class UserRole(StrEnum):
    ADMIN = "admin"  # may change the organisation's privacy policy, export and erase
    MEMBER = "member"


class TrackingMode(StrEnum):
    """What an organisation tracks at all (Settings > Privacy)."""

    INDIVIDUAL = "individual"  # per-person opens and clicks
    AGGREGATE = "aggregate"  # anonymous counts per email only
    OFF = "off"  # no pixel, no link wrapping


class ConsentState(StrEnum):
    UNKNOWN = "unknown"
    GRANTED = "granted"
    REFUSED = "refused"
    WITHDRAWN = "withdrawn"


class ConsentMethod(StrEnum):
    """How a consent (or its refusal or withdrawal) was given."""

    WEB_FORM = "web_form"
    EMAIL_REPLY = "email_reply"
    VERBAL = "verbal"
    IMPORTED = "imported"
    OPT_OUT_PAGE = "opt_out_page"


class ConsentRecord(Base):
    """One change of a contact's consent, with what proves it (append-only).

    GDPR Art. 7(1): the controller must be able to demonstrate consent, so each
    record keeps when, how, the text the person saw, who recorded it, and for the
    public opt-out page the network prefix and browser it came from.
    """

    __tablename__ = "consent_records"
    __table_args__ = (Index("ix_consent_records_contact_at", "contact_id", "recorded_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    state: Mapped[ConsentState] = mapped_column(String(16))
    previous_state: Mapped[ConsentState] = mapped_column(String(16))
    method: Mapped[ConsentMethod] = mapped_column(String(16))
    text: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(String(1000), default="")
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When the person gave it, if the record was made later (an imported list).
    given_at: Mapped[datetime | None]
    recorded_by_user_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL")
    )
    # Who recorded it, as shown: a user's address, "the recipient (opt-out page)".
    recorded_by: Mapped[str] = mapped_column(String(320), default="")
    network: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str] = mapped_column(String(1000), default="")


class AuditEntry(Base):
    """Who looked at a contact's tracking data or changed consent or policy, and when.

    ``subject`` names the contact; erasing the contact blanks it and keeps only
    ``subject_key`` (a keyed hash), so the log still shows that something was done
    without holding the address.
    """

    __tablename__ = "audit_entries"
    __table_args__ = (
        Index("ix_audit_entries_org_at", "organisation_id", "at"),
        Index("ix_audit_entries_subject_key", "organisation_id", "subject_key"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    actor: Mapped[str] = mapped_column(String(320), default="")
    # How the actor came: web, api, cli, public (the opt-out page).
    channel: Mapped[str] = mapped_column(String(16), default="web")
    action: Mapped[str] = mapped_column(String(40))
    subject: Mapped[str] = mapped_column(String(320), default="")
    subject_key: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[str] = mapped_column(Text, default="")


class ErasedAddress(Base):
    """An address erased at its owner's request, kept only as a keyed hash: a later email
    to it goes untracked until the person consents again."""

    __tablename__ = "erased_addresses"
    __table_args__ = (UniqueConstraint("organisation_id", "address_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    address_key: Mapped[str] = mapped_column(String(64))
    erased_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnonymousHit(Base):
    """The uid of a hit counted anonymously (aggregate tracking), and nothing else: it
    keeps replaying a journal exactly-once for hits that leave no event behind."""

    __tablename__ = "anonymous_hits"

    uid: Mapped[str] = mapped_column(String(32), primary_key=True)
    recorded_at: Mapped[datetime] = mapped_column(index=True)


# Defaults of a new organisation's policy (the model's column defaults say the same).
# 13 months: the lifetime the CNIL allows audience-measurement trackers.
DEFAULT_RETENTION_DAYS = 395
MIN_RETENTION_DAYS = 1
MAX_RETENTION_DAYS = 3650
