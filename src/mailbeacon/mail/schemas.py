"""What the mail domain takes in (a draft) and hands out (sent emails with their
delivery and tracking, as the Mail tab and the JSON API show them)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import Base64Bytes, BaseModel, Field, StrictBool

from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.models import (
    CopyStatus,
    EventKind,
    EventLabel,
    RecipientKind,
    TrackingDecision,
)


class Draft(BaseModel):
    """An email about to be sent; addresses are raw strings, validated by the service.

    Each entry of ``to``/``cc``/``bcc`` may hold several comma-separated addresses,
    exactly as typed. Give ``body_html`` (rich text), ``body_text`` (plain text)
    or both; with HTML alone the plain-text part is generated from it.
    """

    to: list[str] = Field(default_factory=list)
    cc: list[str] = Field(default_factory=list)
    bcc: list[str] = Field(default_factory=list)
    subject: str = ""
    body_html: str | None = None
    body_text: str | None = None
    open_tracking: bool = True
    link_tracking: bool = True
    # Files as uploaded; their names, types and sizes are checked when the send is planned.
    attachments: list[AttachmentFile] = Field(default_factory=list)


class AttachmentIn(BaseModel):
    """A file to send with the email, its octets base64-encoded (RFC 4648 section 4)."""

    filename: str = Field(max_length=1000, description="The name the recipient sees")
    content_type: str = Field(
        default="",
        max_length=255,
        description="e.g. application/pdf; empty or not a media type: guessed from the "
        "name, else application/octet-stream",
    )
    data: Base64Bytes = Field(description="The file's octets, base64 (standard alphabet)")


class AttachmentOut(BaseModel):
    """A file sent with the email (the octets are not part of this answer)."""

    id: int
    filename: str
    content_type: str
    size: int = Field(description="In octets")


class MessageIn(BaseModel):
    """An email to send. Address fields take a list, or one string of comma-separated addresses."""

    to: list[str] | str = Field(default_factory=list)
    cc: list[str] | str = Field(default_factory=list)
    bcc: list[str] | str = Field(default_factory=list)
    subject: str = ""
    body_html: str | None = None
    body_text: str | None = None
    # Omitted: as in the user's last send. An option switched off in Settings is refused.
    open_tracking: bool | None = None
    link_tracking: bool | None = None
    attachments: list[AttachmentIn] = Field(
        default_factory=list,
        max_length=20,
        description="Files sent in every copy; together at most the server's limit "
        "(MAX_ATTACHMENT_BYTES, 20 MB unless configured otherwise)",
    )


class MailFilter(StrEnum):
    TRACKED = "tracked"  # "Mail tracking enabled"
    OPENED = "opened"
    CLICKED = "clicked"
    NOT_OPENED = "not_opened"


class EventOut(BaseModel):
    """One hit on the tracking edge, with how it was judged."""

    id: int
    occurred_at: datetime
    kind: EventKind
    label: EventLabel = Field(description="How the hit was judged")
    person: bool = Field(description="Counts in the figures (a person, or a proxy for one)")
    judged: str = Field(description="The label in words, as the pages show it")
    reason: str = Field(description="Why it was judged so")
    copy_id: int
    recipient: str
    recipient_name: str = Field(
        default="", description="The recipient's name as written in To or Cc, else the contact's"
    )
    link_position: int | None
    link_url: str | None
    link_text: str | None
    suspect: bool = Field(
        default=False,
        description="Recorded on a copy that bounced: no person received it, so this hit "
        "came from a machine (a scanner at the receiving server, a forwarding service)",
    )
    possibly_forwarded: bool = Field(
        default=False,
        description="A human open from a network and agent unlike the copy's earlier human "
        "opens: perhaps someone the email was forwarded to",
    )


class IconOut(BaseModel):
    """The open or link icon of a sent email and what hovering it shows."""

    state: Literal["off", "waiting", "done"] = Field(
        description="off: not tracked (no icon); waiting: nothing yet (faint); "
        "done: a person opened / clicked (solid)"
    )
    count: int = Field(description="Opens or clicks by people")
    occasions: list[EventOut] = Field(description="Each person's open or click, newest first")
    machine: list[EventOut] = Field(
        description="Machine hits and your own views, shown apart, newest first"
    )


class FiguresOut(BaseModel):
    """The figures a sent email and each recipient's copy carry (models.TrackingFigures)."""

    open_count: int = Field(description="Opens by people")
    click_count: int = Field(description="Clicks by people")
    machine_event_count: int = Field(description="Machine hits and your own views")
    first_open_at: datetime | None
    last_open_at: datetime | None
    first_click_at: datetime | None
    last_click_at: datetime | None
    forwarded_open_count: int = Field(
        default=0,
        description="Of open_count, the opens from a network and agent unlike the copy's "
        "earlier ones: possibly someone it was forwarded to",
    )


FIGURES = tuple(FiguresOut.model_fields)


def figures_of(source: object) -> dict[str, Any]:
    """The figure fields of a message or copy (ORM object or row), for a FiguresOut."""
    return {name: getattr(source, name) for name in FIGURES}


class BounceOut(BaseModel):
    code: str = Field(description="Enhanced status code (RFC 3463), e.g. 5.1.1; may be empty")
    diagnostic: str = Field(description="The remote server's answer or the reason given")


class RecipientOut(FiguresOut):
    """One recipient's own copy of a sent email: its delivery and its tracking."""

    copy_id: int
    address: str = Field(description="As sent: international domains in punycode")
    name: str = Field(
        default="", description="The name as written in To or Cc, else the contact's; may be empty"
    )
    kind: RecipientKind
    status: CopyStatus = Field(description="Delivery of this copy; `bounced` once a bounce came")
    open_tracked: bool
    links_tracked: bool
    replied_at: datetime | None = Field(description="When this recipient first replied")
    reply_count: int = Field(description="Replies from this recipient (not automatic ones)")
    auto_replied_at: datetime | None = Field(
        description="When an automatic reply (out of office) first came; never a reply"
    )
    bounce: BounceOut | None = Field(description="For a bounced copy: what the report said")


class MailRowOut(FiguresOut):
    """A sent email as the Mail tab lists it."""

    id: int
    subject: str
    created_at: datetime
    sent_at: datetime | None
    to: str
    cc: str
    recipients: list[RecipientOut]
    open_icon: IconOut
    link_icon: IconOut
    more_events: int = Field(description="Events left out of the hover lists (see the timeline)")
    reply_count: int = Field(description="Replies by people, forwards' recipients included")
    last_reply_at: datetime | None


class MailPageOut(BaseModel):
    items: list[MailRowOut]
    older_cursor: str | None = Field(description="Pass as `before` for older emails")
    newer_cursor: str | None = Field(description="Pass as `after` for newer emails")


class LinkClicksOut(BaseModel):
    position: int
    url: str
    text: str
    click_count: int = Field(description="Clicks by people")
    machine_click_count: int
    first_click_at: datetime | None
    last_click_at: datetime | None


class RecipientDetailOut(RecipientOut):
    decision: TrackingDecision = Field(description="The tracking decision for this copy")
    decision_reason: str
    sent_at: datetime | None
    smtp_reply: str
    links: list[LinkClicksOut] = Field(description="Clicks per link of this copy")


class LinkOut(BaseModel):
    position: int
    url: str
    text: str
    click_count: int
    machine_click_count: int


class SentCopyOut(BaseModel):
    status: Literal["pending", "done", "failed"] = Field(
        description="pending: not saved yet (retried with back-off); done: saved; "
        "failed: given up after the last attempt"
    )
    folder: str
    saved_at: datetime | None
    replaced_count: int = Field(description="Tracked copies the provider had saved, deleted")
    attempts: int
    next_attempt_at: datetime | None
    error: str = Field(description="Why the last attempt failed, in one sentence")


class ReplyOut(BaseModel):
    """A reply, automatic reply or bounce to one of your emails."""

    id: int
    kind: Literal["reply", "auto_reply", "bounce"]
    copy_id: int | None = Field(
        description="The recipient copy answered; null for a reply from someone the email "
        "was forwarded to"
    )
    from_address: str
    from_name: str
    subject: str
    received_at: datetime
    new_text: str = Field(description="What they wrote this time, quoted history left out")
    full_text: str = Field(
        description="The whole text, quoted history included; tracked links restored"
    )
    body_html: str | None = Field(
        description="The HTML body sanitised: no scripts, no tracking pixel, tracked links "
        "restored, remote images left out unless asked for"
    )
    bounce: BounceOut | None


class MailDetailOut(FiguresOut):
    """One sent email with everything its detail page shows."""

    id: int
    subject: str
    sender_name: str
    sender_address: str
    to: str
    cc: str
    created_at: datetime
    sent_at: datetime | None
    open_tracking: bool
    link_tracking: bool
    open_icon: IconOut
    link_icon: IconOut
    recipients: list[RecipientDetailOut]
    links: list[LinkOut]
    body_html: str | None = Field(
        description="The body as written, sanitised: no scripts, no tracking pixel, "
        "tracked links restored to their destinations"
    )
    body_text: str | None
    timeline: list[EventOut] = Field(description="The newest events; page on with /events")
    timeline_older_cursor: str | None
    reply_count: int = Field(description="Replies by people, forwards' recipients included")
    last_reply_at: datetime | None
    sent_copy: SentCopyOut | None = Field(
        description="The sender's copy in the mailbox's Sent folder (null without IMAP)"
    )
    attachments: list[AttachmentOut] = Field(
        default_factory=list, description="Files sent with the email, in every copy"
    )


class EventPageOut(BaseModel):
    items: list[EventOut]
    older_cursor: str | None = Field(description="Pass as `before` for older events")


class RecipientsIn(BaseModel):
    """The recipients typed so far in compose (as typed: each field may hold several)."""

    to: str = Field(default="", max_length=100_000)
    cc: str = Field(default="", max_length=100_000)
    bcc: str = Field(default="", max_length=100_000)
    open_tracking: StrictBool = True
    link_tracking: StrictBool = True


class RecipientTrackingOut(BaseModel):
    """Whether one recipient's copy would be tracked, as compose's chip shows it."""

    address: str
    kind: RecipientKind
    tracked: bool
    decision: TrackingDecision
    label: str = Field(description='The chip: "tracked", "not tracked: no consent", ...')
    reason: str


class RecipientsTrackingOut(BaseModel):
    recipients: list[RecipientTrackingOut]
