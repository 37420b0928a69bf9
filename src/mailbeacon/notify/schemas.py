"""What the notification API takes and returns."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field


class NotificationOut(BaseModel):
    id: int
    kind: str = Field(description="first_open, first_click or reopen")
    title: str
    message_id: int
    copy_id: int = Field(description="The recipient copy the activity belongs to")
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
    ids: list[int] = Field(min_length=1, max_length=1000)


class NotificationSettings(BaseModel):
    notify_tracking: bool = Field(description="Notifications for tracking activities")
    quiet_minutes: int = Field(
        ge=0,
        le=7 * 24 * 60,
        description="An open after this many quiet minutes notifies again; "
        "opens inside it add to the latest notification",
    )
