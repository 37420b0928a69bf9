"""Work written in the same transaction as the change that causes it."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class OutboxEntry(Base):
    """A send request: the worker delivers every queued copy of the message."""

    __tablename__ = "outbox_entries"
    __table_args__ = (Index("ix_outbox_entries_pending", "completed_at", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(32), default="send_message")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)


class DemoMessage(Base):
    """A message delivered to the built-in demo mailbox, read on the Demo inbox page."""

    __tablename__ = "demo_messages"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    mail_from: Mapped[str] = mapped_column(String(320))
    recipient: Mapped[str] = mapped_column(String(320), index=True)
    raw: Mapped[bytes]
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
