"""A sent message, its per-recipient copies and the links it carries."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import (
    Boolean,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class RecipientKind(StrEnum):
    TO = "to"
    CC = "cc"
    BCC = "bcc"


class TrackingDecision(StrEnum):
    """Why a recipient's copy is (or is not) tracked; stored with the copy."""

    TRACKED = "tracked"
    PLAIN_TEXT = "plain_text"  # links tracked, but plain text cannot carry a pixel
    EMPTY_BODY = "empty_body"
    NO_CONSENT = "no_consent"
    DISABLED_BY_USER = "disabled_by_user"
    DISABLED_BY_ORG = "disabled_by_org"
    # Sent to the sender's own address: their own reading must never count as an open.
    OWN_ADDRESS = "own_address"
    # Tracked, but counted per email only (the organisation's policy is "aggregate").
    AGGREGATE = "aggregate"


class CopyStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    UNKNOWN = "unknown"
    PREVIEW = "preview"
    BOUNCED = "bounced"  # delivered, then bounced (a report came back through sync)


class TrackingFigures:
    """Figures kept current by the ingest writer in the same transaction as the
    events (see tracking/event_sql.py); only people (human and image-proxy opens,
    human clicks) count, machines go to ``machine_event_count``."""

    open_count: Mapped[int] = mapped_column(Integer, default=0)
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    machine_event_count: Mapped[int] = mapped_column(Integer, default=0)
    first_open_at: Mapped[datetime | None]
    last_open_at: Mapped[datetime | None]
    first_click_at: Mapped[datetime | None]
    last_click_at: Mapped[datetime | None]
    # Of ``open_count``, the human opens from a network and agent unlike the copy's
    # earlier ones (privacy's forwarding observer counts them).
    forwarded_open_count: Mapped[int] = mapped_column(Integer, default=0)


# Every batch of hits updates the figures of the copies and messages it touches; room
# left on each page lets PostgreSQL update them in place (HOT: no new index entries).
# The migration a1c3e5f7b9d2 says what it saves.
FIGURES_FILLFACTOR = 70


class Message(TrackingFigures, Base):
    __tablename__ = "messages"
    __table_args__ = (
        Index("ix_messages_user_created", "user_id", "created_at"),
        # Sync matches replies and bounces to what was sent by this header.
        Index("ix_messages_message_id_header", "message_id_header"),
        {"postgresql_with": {"fillfactor": FIGURES_FILLFACTOR}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Null for previews made by `mailbeacon instrument`: nobody owns their data.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    subject: Mapped[str] = mapped_column(String(998), default="")
    body_html: Mapped[str | None] = mapped_column(Text)
    body_text: Mapped[str | None] = mapped_column(Text)
    open_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    link_tracking: Mapped[bool] = mapped_column(Boolean, default=True)
    is_preview: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]
    # What every copy shows, identical for all recipients (Bcc never appears).
    sender_name: Mapped[str] = mapped_column(String(200), default="")
    sender_address: Mapped[str] = mapped_column(String(320), default="")
    to_header: Mapped[str] = mapped_column(Text, default="")
    cc_header: Mapped[str] = mapped_column(Text, default="")
    message_id_header: Mapped[str] = mapped_column(String(500), default="")
    mailbox_connection_id: Mapped[int | None] = mapped_column(
        ForeignKey("mailbox_connections.id", ondelete="SET NULL")
    )
    # Replies (not automatic ones) to any copy, or from someone it was forwarded to;
    # kept by sync in the transaction that stores the reply.
    reply_count: Mapped[int] = mapped_column(Integer, default=0)
    last_reply_at: Mapped[datetime | None]


class RecipientCopy(TrackingFigures, Base):
    """One recipient's own copy of a message, with its own tokens and figures."""

    __tablename__ = "recipient_copies"
    __table_args__ = (
        Index("ix_recipient_copies_status_next", "status", "next_attempt_at"),
        # Searching the Mail tab by a Bcc recipient (To and Cc are in the headers).
        Index(
            "ix_recipient_copies_bcc",
            "message_id",
            postgresql_where=text("kind = 'bcc'"),
            sqlite_where=text("kind = 'bcc'"),
        ),
        {"postgresql_with": {"fillfactor": FIGURES_FILLFACTOR}},
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(
        ForeignKey("messages.id", ondelete="CASCADE"), index=True
    )
    address: Mapped[str] = mapped_column(String(320))
    kind: Mapped[RecipientKind] = mapped_column(String(8), default=RecipientKind.TO)
    decision: Mapped[TrackingDecision] = mapped_column(String(32))
    decision_reason: Mapped[str] = mapped_column(String(500), default="")
    open_tracked: Mapped[bool] = mapped_column(Boolean, default=False)
    links_tracked: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[CopyStatus] = mapped_column(String(16), default=CopyStatus.QUEUED)
    sent_at: Mapped[datetime | None]
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"))
    # Delivery bookkeeping for the outbox worker.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(100))
    claimed_at: Mapped[datetime | None]
    smtp_reply: Mapped[str] = mapped_column(String(1000), default="")
    # Any event, person or machine; lets the writer skip the history look-up
    # for copies that had no recent hit (the common case).
    last_event_at: Mapped[datetime | None]
    # What came back through mailbox sync (sync/receiving.py): the first reply and
    # how many, the first automatic reply, and a bounce's status code and text.
    replied_at: Mapped[datetime | None]
    reply_count: Mapped[int] = mapped_column(Integer, default=0)
    auto_replied_at: Mapped[datetime | None]
    bounced_at: Mapped[datetime | None]
    bounce_status: Mapped[str] = mapped_column(String(32), default="")
    bounce_diagnostic: Mapped[str] = mapped_column(String(500), default="")
    # The bodies live in a table of their own: see CopyBody.
    body: Mapped[CopyBody | None] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, lazy="select"
    )

    @property
    def html_body(self) -> str | None:
        """The copy's own HTML (its pixel and click links in), None for plain text."""
        return self.body.html_body if self.body is not None else None

    @html_body.setter
    def html_body(self, value: str | None) -> None:
        self._own_body().html_body = value

    @property
    def text_body(self) -> str | None:
        """The copy's own text part."""
        return self.body.text_body if self.body is not None else None

    @text_body.setter
    def text_body(self, value: str | None) -> None:
        self._own_body().text_body = value

    def _own_body(self) -> CopyBody:
        if self.body is None:
            self.body = CopyBody()
        return self.body


class CopyBody(Base):
    """A copy's own bodies, apart from the copy's row.

    Every hit the pipeline stores updates its copy's figures, and every send updates
    the copy three times (reserve, start, outcome). SQLite rewrites a row whole, its
    overflow pages too, whenever its size changes: with the bodies in the copy's row
    (the corpus's median HTML is 16 KB) each of those updates wrote them again, which
    halved the consumer's hits per second (bench/README.md). The bodies are written
    once, when the send is planned, and read by the outbox worker.
    """

    __tablename__ = "recipient_copy_bodies"

    copy_id: Mapped[int] = mapped_column(
        ForeignKey("recipient_copies.id", ondelete="CASCADE"), primary_key=True
    )
    html_body: Mapped[str | None] = mapped_column(Text)
    text_body: Mapped[str | None] = mapped_column(Text)


class MessageLink(Base):
    """A tracked destination; every copy of the message shares its position."""

    __tablename__ = "message_links"
    __table_args__ = (UniqueConstraint("message_id", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(Text)
    text: Mapped[str] = mapped_column(String(500), default="")


class MessageAttachment(Base):
    """A file sent with a message, in every copy and in the Sent folder's.

    Kept in the database with its message (deleted with it, by the foreign key): one
    place to back up, and no file left behind on a data folder when a message goes.
    The octets load only when asked for (a listing reads name, type and size).
    """

    __tablename__ = "message_attachments"
    __table_args__ = (UniqueConstraint("message_id", "position"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    position: Mapped[int] = mapped_column(Integer)
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(255))
    size: Mapped[int] = mapped_column(Integer)
    data: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)
