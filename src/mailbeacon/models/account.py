"""Organisations, their users, sign-in sessions and API tokens."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # "Settings > Email sync": what this user allows at all. When an option is
    # off, compose does not offer it.
    open_tracking_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    link_tracking_enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    notify_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    # The switches of the user's last send: compose starts from them.
    last_open_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    last_link_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    # Minutes of quiet after which a new open notifies again (issue: notifications).
    notify_quiet_minutes: Mapped[int] = mapped_column(Integer, default=60)

    @property
    def compose_open_tracking(self) -> bool:
        """Where compose's open-tracking switch starts: as last time, if Settings allow it."""
        return self.open_tracking_enabled and self.last_open_tracking

    @property
    def compose_link_tracking(self) -> bool:
        """Where compose's link-tracking switch starts: as last time, if Settings allow it."""
        return self.link_tracking_enabled and self.last_link_tracking


class UserSession(Base):
    """A signed-in browser; the cookie carries only a random id, stored hashed."""

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class ApiToken(Base):
    """A bearer token for the JSON API; only its hash is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SignInAttempt(Base):
    """Recent sign-in attempts, shared by every process, for rate limiting."""

    __tablename__ = "sign_in_attempts"
    __table_args__ = (Index("ix_sign_in_attempts_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(400))  # "email:<address>" or "ip:<prefix>"
    at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
