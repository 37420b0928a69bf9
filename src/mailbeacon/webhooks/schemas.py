"""What the webhooks API takes and returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from mailbeacon.models import DeliveryStatus, WebhookScope
from mailbeacon.webhooks.events import EventType

URL_DESCRIPTION = (
    "Where events are posted: https (plain http only to a private network or this "
    "machine, where the operator allows those)"
)


class EndpointIn(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str = Field(max_length=2000, description=URL_DESCRIPTION)
    description: str = Field(default="", max_length=200)
    events: list[EventType] = Field(
        min_length=1, max_length=20, description="The event types to post"
    )
    every_open: StrictBool = Field(
        default=False, description="copy.opened for every open by a person, not only the first"
    )
    scope: WebhookScope = Field(
        default=WebhookScope.USER,
        description="user: your own email; organisation: every user's (admins only)",
    )


class EndpointPatch(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    url: str | None = Field(default=None, max_length=2000, description=URL_DESCRIPTION)
    description: str | None = Field(default=None, max_length=200)
    events: list[EventType] | None = Field(default=None, min_length=1, max_length=20)
    every_open: StrictBool | None = None
    enabled: StrictBool | None = Field(
        default=None, description="false stops deliveries; true resumes them after a disable"
    )


class EndpointOut(BaseModel):
    id: int
    url: str
    description: str
    events: list[str]
    every_open: bool
    scope: WebhookScope
    enabled: bool
    disabled_at: datetime | None
    disabled_reason: str = Field(description="Why it was disabled (410 Gone, a day of failures)")
    failing_since: datetime | None = Field(
        description="The first failed attempt since the last delivery; a day of it disables"
    )
    last_delivered_at: datetime | None
    created_at: datetime
    updated_at: datetime


class EndpointCreatedOut(EndpointOut):
    secret: str = Field(
        description="The signing secret (whsec_...), shown only in this answer: keep it to "
        "verify the webhook-signature header"
    )


class DeliveryOut(BaseModel):
    id: int
    webhook_id: str = Field(description="The webhook-id header, the same on every attempt")
    type: str
    status: DeliveryStatus
    attempts: int
    response_status: int | None = Field(description="The receiver's last HTTP status")
    error: str = Field(description="What went wrong last, if anything")
    created_at: datetime
    last_attempt_at: datetime | None
    next_attempt_at: datetime | None = Field(description="When it is tried next, if pending")
    delivered_at: datetime | None


class DeliveryPage(BaseModel):
    items: list[DeliveryOut]
    older_cursor: str | None = Field(description="Pass as `before` for the next (older) page")
