"""What the notification API takes and returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field, StrictBool, StrictInt

from mailbeacon.kit.ids import RowId


class NotificationOut(BaseModel):
    id: int
    kind: str = Field(description="first_open, first_click, reopen, reply or webhook_disabled")
    title: str
    message_id: int | None = Field(
        description="The email it is about; null for a notice about no email (webhook_disabled)"
    )
    copy_id: int | None = Field(
        description="The recipient copy the activity belongs to; null for a reply from "
        "someone the email was forwarded to"
    )
    link_position: int | None = Field(description="The link, for first_click")
    occurrences: int = Field(description="Opens collapsed into this notification")
    created_at: datetime
    updated_at: datetime = Field(description="The latest occurrence")
    read: bool
    read_at: datetime | None


class NotificationPage(BaseModel):
    items: list[NotificationOut]
    unread_count: int = Field(description="Counted up to 1000")
    next_cursor: str | None = Field(description="Pass as `before` for the next (older) page")


class UnreadCount(BaseModel):
    count: int = Field(description="Unread notifications, counted up to 1000")


class MarkRead(BaseModel):
    ids: list[RowId] = Field(min_length=1, max_length=1000)


class NotificationSettings(BaseModel):
    notify_tracking: StrictBool = Field(description="Notifications for tracking activities")
    quiet_minutes: StrictInt = Field(
        ge=0,
        le=7 * 24 * 60,
        description="An open after this many quiet minutes notifies again; "
        "opens inside it add to the latest notification",
    )
