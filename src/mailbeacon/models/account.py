"""Organisations, their users, sign-in sessions and API tokens."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base
from mailbeacon.models.privacy import DEFAULT_RETENTION_DAYS, TrackingMode, UserRole


class Organisation(Base):
    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # The privacy policy (Settings > Privacy, admins only; see the privacy domain).
    # A new organisation asks for consent: tracking a person needs their prior
    # consent (ePrivacy Art. 5(3), CNIL recommendation on tracking pixels, 2026).
    tracking_mode: Mapped[TrackingMode] = mapped_column(String(16), default=TrackingMode.INDIVIDUAL)
    consent_required: Mapped[bool] = mapped_column(Boolean, default=True)
    opt_out_footer: Mapped[bool] = mapped_column(Boolean, default=True)
    retention_days: Mapped[int] = mapped_column(Integer, default=DEFAULT_RETENTION_DAYS)
    # Whether a hit's network prefix (/24, /48) is kept at all.
    store_network: Mapped[bool] = mapped_column(Boolean, default=True)
    # A withdrawal also deletes the person's existing events (else they stay until erased).
    delete_events_on_withdrawal: Mapped[bool] = mapped_column(Boolean, default=False)
    # Where recipients write about their data (the opt-out page names it).
    privacy_contact: Mapped[str] = mapped_column(String(320), default="")


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(ForeignKey("organisations.id"), index=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(String(200))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # UserRole: the first user of an organisation is its admin.
    role: Mapped[UserRole] = mapped_column(String(16), default=UserRole.MEMBER)

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
    # An IANA zone name ("Europe/Paris") pages show times in; "" until the browser
    # has told us (pages then show UTC).
    time_zone: Mapped[str] = mapped_column(String(64), default="", server_default="")

    @property
    def is_admin(self) -> bool:
        return self.role == UserRole.ADMIN

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


class Invitation(Base):
    """A one-time link an admin sends a colleague to join the organisation; only its hash
    is kept, and it is good once, until ``expires_at``."""

    __tablename__ = "invitations"

    id: Mapped[int] = mapped_column(primary_key=True)
    organisation_id: Mapped[int] = mapped_column(
        ForeignKey("organisations.id", ondelete="CASCADE"), index=True
    )
    invited_by_id: Mapped[int | None] = mapped_column(
        ForeignKey("users.id", ondelete="SET NULL"), index=True
    )
    email: Mapped[str] = mapped_column(String(320))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class TokenScope(StrEnum):
    """What an API token may do; a browser session may do everything."""

    READ = "read"  # read email, tracking and notifications
    SEND = "send"  # send email and retry a copy
    ADMIN = "admin"  # every other change: Settings, API tokens, notifications

    @classmethod
    def parse(cls, text: str) -> frozenset[TokenScope]:
        """Scopes from their stored (space-separated) or typed (comma-separated) form."""
        return frozenset(cls(word) for word in text.replace(",", " ").split())

    @classmethod
    def to_text(cls, scopes: Iterable[TokenScope]) -> str:
        """The stored form: space-separated as OAuth 2.0 writes scopes (RFC 6749 section 3.3)."""
        chosen = set(scopes)
        return " ".join(scope.value for scope in cls if scope in chosen)


# Tokens minted before scopes existed: what the JSON API let them do, less Settings.
LEGACY_TOKEN_SCOPES = "read send"  # noqa: S105 (scope names, no secret)


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
    # TokenScope values, space-separated.
    scopes: Mapped[str] = mapped_column(String(100), server_default=LEGACY_TOKEN_SCOPES)
    # None: the token never expires.
    expires_at: Mapped[datetime | None]

    @property
    def scope_set(self) -> frozenset[TokenScope]:
        return TokenScope.parse(self.scopes)


class SignInAttempt(Base):
    """Recent sign-in attempts, shared by every process, for rate limiting."""

    __tablename__ = "sign_in_attempts"
    __table_args__ = (Index("ix_sign_in_attempts_key_at", "key", "at"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    # "account:<address> net:<prefix>" (one account from one network) or "ip:<prefix>"
    key: Mapped[str] = mapped_column(String(400))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    succeeded: Mapped[bool] = mapped_column(Boolean, default=False)
