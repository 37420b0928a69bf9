"""What the privacy domain takes in and hands out (the JSON API and the pages alike)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, StrictInt, field_validator

from mailbeacon.kit.header_text import body_text_problem, capitalised
from mailbeacon.models import ConsentMethod, ConsentState, EventKind, EventLabel, TrackingMode
from mailbeacon.models.privacy import MAX_RETENTION_DAYS, MIN_RETENTION_DAYS

MAX_CONSENT_TEXT = 5000
MAX_NOTE = 1000


def storable(value: str | None) -> str | None:
    """Text the databases can store as it is: no NUL (PostgreSQL refuses it) and no lone
    surrogate (no encoding can write one); refused with the reason, never changed."""
    if value is not None:
        problem = body_text_problem(value)
        if problem is not None:
            raise ValueError(capitalised(problem))
    return value


class PolicyOut(BaseModel):
    """The organisation's privacy policy."""

    organisation: str
    tracking: TrackingMode = Field(
        description="individual: per-person opens and clicks; aggregate: anonymous counts per "
        "email only; off: no pixel, no link wrapping"
    )
    consent_required: bool = Field(
        description="A recipient without granted consent gets an untracked copy"
    )
    opt_out_footer: bool = Field(description="Tracked copies end with a 'Don't track me' link")
    retention_days: int = Field(description="Per-person events older than this are deleted")
    store_network: bool = Field(description="Whether a hit's network prefix is kept at all")
    delete_events_on_withdrawal: bool = Field(
        description="A withdrawal also deletes the person's existing events"
    )
    privacy_contact: str = Field(
        description="Where recipients write about their data (shown on the opt-out page)"
    )


class PolicyIn(BaseModel):
    """A change of the policy; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    tracking: TrackingMode | None = None
    consent_required: StrictBool | None = None
    opt_out_footer: StrictBool | None = None
    retention_days: StrictInt | None = Field(
        default=None, ge=MIN_RETENTION_DAYS, le=MAX_RETENTION_DAYS
    )
    store_network: StrictBool | None = None
    delete_events_on_withdrawal: StrictBool | None = None
    privacy_contact: str | None = Field(default=None, max_length=320)

    _storable = field_validator("privacy_contact")(storable)


class ConsentIn(BaseModel):
    """A consent given, refused or withdrawn, with what proves it."""

    model_config = ConfigDict(extra="forbid")

    state: ConsentState = Field(description="granted, refused or withdrawn")
    method: ConsentMethod = Field(
        description="web_form, email_reply, verbal or imported (opt_out_page is the "
        "recipient's own page)"
    )
    text: str = Field(
        default="",
        max_length=MAX_CONSENT_TEXT,
        description="The text the person saw or heard when they gave it (required to grant)",
    )
    note: str = Field(default="", max_length=MAX_NOTE)
    given_at: Annotated[datetime, Strict()] | None = Field(
        default=None, description="When the person gave it, if earlier than now"
    )

    _storable = field_validator("text", "note")(storable)


class ConsentRecordOut(BaseModel):
    state: ConsentState
    previous_state: ConsentState
    method: ConsentMethod
    text: str
    note: str
    recorded_at: datetime
    given_at: datetime | None
    recorded_by: str
    network: str | None = Field(description="Network prefix of the opt-out page's visitor")
    user_agent: str


class ContactOut(BaseModel):
    address: str
    name: str
    consent_state: ConsentState
    consent_updated_at: datetime | None
    created_at: datetime


class ContactPageOut(BaseModel):
    items: list[ContactOut]
    older_cursor: str | None = Field(description="Pass as `before` for the next page")


class ContactEventOut(BaseModel):
    occurred_at: datetime
    message_id: int
    kind: EventKind
    label: EventLabel
    reason: str
    link_url: str | None
    possibly_forwarded: bool


class ContactEmailOut(BaseModel):
    message_id: int
    subject: str
    sent_at: datetime | None
    kind: str
    status: str
    decision: str
    decision_reason: str
    open_count: int
    click_count: int
    forwarded_open_count: int
    first_open_at: datetime | None
    last_open_at: datetime | None
    replied_at: datetime | None


class ContactDetailOut(ContactOut):
    """A contact: consent with its history, and the emails you sent them with their
    tracking (another user's emails to the same contact are not shown)."""

    consent_history: list[ConsentRecordOut]
    emails: list[ContactEmailOut]
    events: list[ContactEventOut]
    events_older_cursor: str | None


class ImportRejectOut(BaseModel):
    line: int
    text: str
    reason: str


class ImportReportOut(BaseModel):
    accepted: int
    rejected: list[ImportRejectOut]


class ErasureOut(BaseModel):
    address: str
    copies: int = Field(description="Copies of emails to the contact deleted with their events")
    replies: int = Field(description="Replies, automatic replies and bounces deleted")
    demo_deliveries: int
    consent_records: int


class AuditEntryOut(BaseModel):
    at: datetime
    actor: str
    channel: str
    action: str
    subject: str
    detail: str


class AuditPageOut(BaseModel):
    items: list[AuditEntryOut]
    older_cursor: str | None
