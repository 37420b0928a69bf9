"""Webhooks: where a user's (or an organisation's) events go, the events written with
what they report, and each event's delivery to each endpoint."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class WebhookScope(StrEnum):
    USER = "user"  # the owner's own email
    ORGANISATION = "organisation"  # every user's email in the owner's organisation (admins)


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # waiting for its (next) attempt
    DELIVERING = "delivering"  # claimed by a worker, the request in flight
    DELIVERED = "delivered"  # the receiver answered 2xx
    FAILED = "failed"  # given up: retries ran out, or the endpoint was disabled


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    organisation_id: Mapped[int] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    scope: Mapped[WebhookScope] = mapped_column(String(16), default=WebhookScope.USER)
    url: Mapped[str] = mapped_column(String(2000))
    description: Mapped[str] = mapped_column(String(200), default="")
    # Event types, space-separated.
    event_types: Mapped[str] = mapped_column(String(500))
    # copy.opened for every open by a person, not only the first.
    every_open: Mapped[bool] = mapped_column(Boolean, default=False)
    # The signing secret (whsec_...), sealed with the installation's credentials key.
    secret_sealed: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    disabled_at: Mapped[datetime | None]
    disabled_reason: Mapped[str] = mapped_column(String(300), default="")
    # The first failed attempt since the last delivered one: a day of failing disables it.
    failing_since: Mapped[datetime | None]
    last_delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookEvent(Base):
    """One fact worth telling, written in the transaction that recorded the fact itself.

    ``uid`` is the ``webhook-id`` every delivery and retry of it carries. The email
    and copy it concerns cascade: erasing them takes their events along.
    """

    __tablename__ = "webhook_events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    uid: Mapped[str] = mapped_column(String(40), unique=True)
    type: Mapped[str] = mapped_column(String(40))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    message_id: Mapped[int | None] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    copy_id: Mapped[int | None] = mapped_column(
        ForeignKey("recipient_copies.id", ondelete="CASCADE"), index=True
    )
    # The JSON body sent, as sent: every retry signs the same bytes.
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event to one endpoint: the delivery log's row, and the worker's queue."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id", "endpoint_id", "id"),
        # A delivery waits for the earlier ones of its endpoint and email (ordering).
        Index(
            "ix_webhook_deliveries_open_order",
            "endpoint_id",
            "ordering_key",
            "event_id",
            postgresql_where=text("status IN ('pending', 'delivering')"),
            sqlite_where=text("status IN ('pending', 'delivering')"),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_events.id", ondelete="CASCADE"), index=True
    )
    # Events with the same key reach an endpoint one at a time, in event id order.
    ordering_key: Mapped[str] = mapped_column(String(64))
    status: Mapped[DeliveryStatus] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    response_status: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str] = mapped_column(String(300), default="")
    delivered_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
