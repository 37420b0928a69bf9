"""Tracking events (append-only) and per-link click figures."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Boolean, ForeignKey, Index, Integer, String, Text, false, text
from sqlalchemy.orm import Mapped, mapped_column

from mailbeacon.kit.clock import utcnow
from mailbeacon.models.base import Base, BigId


class EventKind(StrEnum):
    OPEN = "open"
    CLICK = "click"


class EventLabel(StrEnum):
    HUMAN = "human"
    IMAGE_PROXY = "image_proxy"
    APPLE_MPP = "apple_mpp"
    SCANNER = "scanner"
    LINK_PREVIEW = "link_preview"
    PREFETCH = "prefetch"
    TOO_FAST = "too_fast"
    BURST = "burst"
    SELF = "self"
    DUPLICATE = "duplicate"


# Labels that stand for a person reading the email: these count in the figures.
PERSON_LABELS = frozenset({EventLabel.HUMAN, EventLabel.IMAGE_PROXY})

# The opens a new open is compared with to tell a forward (privacy.forwarding): by
# people, and not marked possibly forwarded themselves. Written out, not bound, in the
# index below and in the query that reads it: a planner uses a partial index only
# where it can prove the query's condition implies the index's.
HUMAN_SOURCE_OPENS = (
    f"kind = '{EventKind.OPEN.value}' AND label = '{EventLabel.HUMAN.value}'"
    " AND NOT possibly_forwarded"
)


class TrackingEvent(Base):
    """One hit on the tracking edge, with the raw signals needed to re-score it.

    No raw IP address is stored: only its truncated prefix (/24 or /48) and the
    name of the published network it belongs to, if any.
    """

    __tablename__ = "tracking_events"
    __table_args__ = (
        Index("ix_tracking_events_copy_time", "copy_id", "occurred_at"),
        Index("ix_tracking_events_message_time", "message_id", "occurred_at"),
        # When each copy's human opens first came from a network, and from an agent: the
        # forwarded-open check's lookups (privacy.repository.first_human_opens) are each
        # the first entry of a range of one of these, whatever the copy's history (its
        # first human open comes from copy_time). Both lead with the copy: a planner
        # without statistics, which can take either for any lookup, then reads one copy's
        # opens, not the whole index.
        Index(
            "ix_tracking_events_human_prefixes",
            "copy_id",
            "ip_prefix",
            "occurred_at",
            postgresql_where=text(HUMAN_SOURCE_OPENS),
            sqlite_where=text(HUMAN_SOURCE_OPENS),
        ),
        Index(
            "ix_tracking_events_human_agents",
            "copy_id",
            "user_agent",
            "occurred_at",
            postgresql_where=text(HUMAN_SOURCE_OPENS),
            sqlite_where=text(HUMAN_SOURCE_OPENS),
        ),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    # Minted by the edge; makes storing from the journal exactly-once.
    uid: Mapped[str] = mapped_column(String(32), unique=True)
    copy_id: Mapped[int] = mapped_column(ForeignKey("recipient_copies.id", ondelete="CASCADE"))
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    kind: Mapped[EventKind] = mapped_column(String(8))
    link_position: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    label: Mapped[EventLabel] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(String(300))
    user_agent: Mapped[str] = mapped_column(Text, default="")
    ip_prefix: Mapped[str | None] = mapped_column(String(64))
    network: Mapped[str | None] = mapped_column(String(64))
    is_head: Mapped[bool] = mapped_column(Boolean, default=False)
    prefetch_hint: Mapped[str | None] = mapped_column(String(100))
    viewer_user_id: Mapped[int | None] = mapped_column(Integer)
    # A human open unlike the copy's earlier human opens (network and agent): maybe
    # someone the email was forwarded to. Set after the insert, so only a server default.
    possibly_forwarded: Mapped[bool] = mapped_column(Boolean, server_default=false())


class LinkClickStat(Base):
    __tablename__ = "link_click_stats"

    copy_id: Mapped[int] = mapped_column(
        ForeignKey("recipient_copies.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    click_count: Mapped[int] = mapped_column(Integer, default=0)
    machine_click_count: Mapped[int] = mapped_column(Integer, default=0)
    first_click_at: Mapped[datetime | None]
    last_click_at: Mapped[datetime | None]
