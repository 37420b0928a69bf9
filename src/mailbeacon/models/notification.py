"""Notifications raised by tracking activity, for the bell and the feed."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class NotificationKind(StrEnum):
    FIRST_OPEN = "first_open"  # first human open of a recipient's copy
    FIRST_CLICK = "first_click"  # first click of one link in a recipient's copy
    REOPEN = "reopen"  # an open after the user's quiet period
    REPLY = "reply"  # a person replied (mailbox sync); never for automatic replies
    # One of the user's webhook endpoints was disabled (410 Gone, or a day of failures);
    # about no email, so without a message.
    WEBHOOK_DISABLED = "webhook_disabled"


class Notification(Base):
    __tablename__ = "notifications"
    __table_args__ = (
        Index("ix_notifications_user_created", "user_id", "created_at"),
        Index("ix_notifications_user_unread", "user_id", "read_at"),
        # The writer finds each copy's latest open notification through it, and
        # erasing a message or copy cascades through these two.
        Index("ix_notifications_copy_kind", "copy_id", "kind"),
        Index("ix_notifications_message", "message_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[NotificationKind] = mapped_column(String(16))
    # Null for notices about no email (a webhook endpoint disabled).
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    # Null for a reply from someone the email was forwarded to (no copy of theirs).
    copy_id: Mapped[int | None] = mapped_column(
        ForeignKey("recipient_copies.id", ondelete="CASCADE")
    )
    link_position: Mapped[int | None] = mapped_column(Integer)
    # Repeated opens inside the quiet period collapse into one notification.
    occurrences: Mapped[int] = mapped_column(Integer, default=1)
    title: Mapped[str] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    read_at: Mapped[datetime | None]
