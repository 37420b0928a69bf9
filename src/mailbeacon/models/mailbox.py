"""A user's mailbox connection: SMTP to send, IMAP to sync."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base


class Security(StrEnum):
    TLS = "tls"  # implicit TLS (465 / 993)
    STARTTLS = "starttls"
    NONE = "none"  # loopback only


class MailboxConnection(Base):
    __tablename__ = "mailbox_connections"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    # The built-in demo mailbox (loopback SMTP that delivers to the Demo inbox).
    is_demo: Mapped[bool] = mapped_column(Boolean, default=False)
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    sender_address: Mapped[str] = mapped_column(String(320))

    smtp_host: Mapped[str] = mapped_column(String(255))
    smtp_port: Mapped[int] = mapped_column(Integer)
    smtp_security: Mapped[Security] = mapped_column(String(16))
    smtp_username: Mapped[str] = mapped_column(String(320), default="")
    # Encrypted at rest (Fernet with the data folder's credentials key).
    smtp_password_encrypted: Mapped[str] = mapped_column(Text, default="")

    imap_host: Mapped[str] = mapped_column(String(255), default="")
    imap_port: Mapped[int] = mapped_column(Integer, default=993)
    imap_security: Mapped[Security] = mapped_column(String(16), default=Security.TLS)
    imap_username: Mapped[str] = mapped_column(String(320), default="")
    imap_password_encrypted: Mapped[str] = mapped_column(Text, default="")
    # "Same as SMTP" (the default): IMAP signs in with the SMTP password.
    imap_same_password: Mapped[bool] = mapped_column(Boolean, default=True)
    sent_folder: Mapped[str] = mapped_column(String(255), default="")
    # Delete the tracked copies a provider saves to Sent by itself (Gmail,
    # Outlook.com) once the one pixel-free copy is there.
    replace_provider_copies: Mapped[bool] = mapped_column(Boolean, default=True)

    last_test_at: Mapped[datetime | None]
    last_test_result: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
