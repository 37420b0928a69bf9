"""Mailbox sync: where each mailbox's INBOX was read up to, the mail kept from it, and
the one pixel-free copy of each sent email that goes into the Sent folder."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    BigInteger,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class SyncState(Base):
    """One mailbox's INBOX as the sync worker last read it, and who reads it now.

    A UID means something only under its UIDVALIDITY (RFC 3501 section 2.3.1.1):
    both are stored together, and a change of UIDVALIDITY starts the first sync
    over. ``lease_owner``/``lease_until`` give one worker at a time the mailbox;
    every write of progress re-checks the lease in its own transaction.
    """

    __tablename__ = "mailbox_sync_states"

    id: Mapped[int] = mapped_column(primary_key=True)
    mailbox_connection_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox_connections.id", ondelete="CASCADE"), unique=True
    )
    # host:port:username the state was read from; another account starts over.
    account_key: Mapped[str] = mapped_column(String(700), default="")
    # The connection's updated_at when the state last saw it: a newer one (settings
    # saved) clears the back-off, so a fixed password is tried at once.
    settings_seen_at: Mapped[datetime | None]
    uidvalidity: Mapped[int | None] = mapped_column(BigInteger)
    last_uid: Mapped[int] = mapped_column(BigInteger, default=0)
    # The first sync reads from this day on; later syncs go forward from last_uid.
    since: Mapped[datetime | None]
    first_sync_done: Mapped[bool] = mapped_column(Boolean, default=False)
    stored_count: Mapped[int] = mapped_column(Integer, default=0)
    last_success_at: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(String(500), default="")
    last_error_at: Mapped[datetime | None]
    failures: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_owner: Mapped[str | None] = mapped_column(String(100))
    lease_until: Mapped[datetime | None]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class ReceivedKind(StrEnum):
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"


class ReceivedMail(Base):
    """A reply, automatic reply or bounce to one of a user's sent emails.

    Nothing else from the mailbox is kept. ``copy_id`` is the recipient copy it
    answers; null for a reply from someone the email was forwarded to.
    ``dedupe_key`` (the incoming Message-ID, else a digest of the message) makes
    storing the same mail twice a no-op, across restarts, a UIDVALIDITY change
    and racing workers alike.
    """

    __tablename__ = "received_mail"
    __table_args__ = (
        UniqueConstraint("user_id", "dedupe_key"),
        Index("ix_received_mail_message_received", "message_id", "received_at"),
        Index("ix_received_mail_copy", "copy_id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    copy_id: Mapped[int | None] = mapped_column(
        ForeignKey("recipient_copies.id", ondelete="SET NULL")
    )
    kind: Mapped[ReceivedKind] = mapped_column(String(16))
    # How it was told apart (e.g. "auto-submitted: auto-replied") and matched.
    reason: Mapped[str] = mapped_column(String(200), default="")
    dedupe_key: Mapped[str] = mapped_column(String(255))
    header_message_id: Mapped[str] = mapped_column(String(500), default="")
    from_address: Mapped[str] = mapped_column(String(320), default="")
    from_name: Mapped[str] = mapped_column(String(200), default="")
    subject: Mapped[str] = mapped_column(String(998), default="")
    # When it reached the mailbox (IMAP INTERNALDATE), and its own Date header.
    received_at: Mapped[datetime]
    dated_at: Mapped[datetime | None]
    new_text: Mapped[str] = mapped_column(Text, default="")
    full_text: Mapped[str] = mapped_column(Text, default="")
    # As received (never shown unsanitised); None for plain-text mail.
    body_html: Mapped[str | None] = mapped_column(Text)
    bounce_status: Mapped[str] = mapped_column(String(32), default="")
    bounce_diagnostic: Mapped[str] = mapped_column(String(500), default="")
    source: Mapped[str] = mapped_column(String(16), default="imap")  # imap | demo
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SentCopyStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"
    FAILED = "failed"  # gave up after the last attempt


class SentFolderCopy(Base):
    """The sender's own copy of a sent email, due in the mailbox's Sent folder.

    Written in the transaction that closes the email's send request, so no
    crash loses it; the sync worker appends it (retrying with back-off) and,
    if the mailbox wants it, deletes the tracked copies the provider saved.
    """

    __tablename__ = "sent_folder_copies"
    __table_args__ = (Index("ix_sent_folder_copies_due", "status", "next_attempt_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), unique=True
    )
    mailbox_connection_id: Mapped[int] = mapped_column(
        ForeignKey("mailbox_connections.id", ondelete="CASCADE"), index=True
    )
    status: Mapped[SentCopyStatus] = mapped_column(String(16), default=SentCopyStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_until: Mapped[datetime | None]
    last_error: Mapped[str] = mapped_column(String(500), default="")
    folder: Mapped[str] = mapped_column(String(255), default="")
    appended_at: Mapped[datetime | None]
    # Tracked copies the provider had saved by itself, found and deleted.
    replaced_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
