"""What one incoming message is (reply, automatic reply, bounce, other), and its details.

Order matters: bounces first (most carry ``Auto-Submitted`` too, RFC 3464
section 2 and RFC 3834 section 5), then automatic replies, then replies, which
are recognised by their threading headers (RFC 5322 section 3.6.4) or, where a
client dropped those, by a reply prefix in the subject. Whether a reply answers
one of our messages is for the caller to decide, from the ids given here.

Parsing never raises for malformed mail: a header that cannot be read counts as
absent.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import re
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import getaddresses, parsedate_to_datetime
from enum import StrEnum

from mailbeacon.sync.autoreplies import auto_reply_reason, is_reply_subject
from mailbeacon.sync.bounces import (
    Action,
    BounceReport,
    FailedRecipient,
    has_bounce_subject,
    is_bounce_sender,
    looks_like_bounce,
    original_message_id,
    read_bounce,
)
from mailbeacon.sync.replytext import ReplyText, reply_text

__all__ = [
    "Action",
    "BounceReport",
    "FailedRecipient",
    "IncomingMessage",
    "Kind",
    "ReplyText",
    "Sender",
    "Threading",
    "classify_message",
]

_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")


class Kind(StrEnum):
    REPLY = "reply"
    AUTO_REPLY = "auto_reply"
    BOUNCE = "bounce"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Sender:
    address: str  # lower-cased; "" when the From header cannot be read
    name: str


@dataclass(frozen=True, slots=True)
class Threading:
    message_id: str | None  # "<local@domain>"
    in_reply_to: tuple[str, ...]
    references: tuple[str, ...]

    @property
    def parents(self) -> tuple[str, ...]:
        """Ids this message answers, nearest first: In-Reply-To, then References backwards."""
        seen: dict[str, None] = {}
        for mid in (*self.in_reply_to, *reversed(self.references)):
            seen.setdefault(mid, None)
        return tuple(seen)


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    kind: Kind
    reason: str  # which sign decided the kind, e.g. "auto-submitted: auto-replied"
    threading: Threading
    sender: Sender
    subject: str
    date: dt.datetime | None  # from the Date header, aware
    bounce: BounceReport | None  # for bounces
    text: ReplyText | None  # for replies, automatic replies and other mail
    # The HTML body as received (never shown unsanitised), for replies and automatic
    # replies that have one; read here so the message is parsed once.
    html: str | None = None


def classify_message(data: bytes) -> IncomingMessage:
    """Read one RFC 5322 message and say what it is."""
    msg = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    threading = Threading(
        message_id=_first_id(_header(msg, "Message-ID")),
        in_reply_to=_ids(_header(msg, "In-Reply-To")),
        references=_ids(_header(msg, "References")),
    )
    sender = _sender(msg)
    subject = " ".join(_header(msg, "Subject").split())
    date = _date(msg)

    def result(kind: Kind, reason: str, bounce: BounceReport | None = None) -> IncomingMessage:
        text = None if kind == Kind.BOUNCE else _safe_text(msg)
        html = _safe_html(msg) if kind in (Kind.REPLY, Kind.AUTO_REPLY) else None
        return IncomingMessage(kind, reason, threading, sender, subject, date, bounce, text, html)

    if looks_like_bounce(msg, sender.address, subject):
        report = _safe_bounce(msg)
        if report is None and is_bounce_sender(sender.address) and has_bounce_subject(subject):
            # Plainly a bounce, in a format nobody reads: keep it a bounce (its
            # returned Message-ID may still match) rather than an auto-reply.
            report = _unreadable_bounce(msg)
        if report is not None:
            if report.standard:
                reason = "delivery status report"
            else:
                reason = "bounce text" if report.recipients else "bounce without recipients"
            return result(Kind.BOUNCE, reason, report)
    auto = auto_reply_reason(msg, subject)
    if auto is not None:
        return result(Kind.AUTO_REPLY, auto)
    if threading.in_reply_to or threading.references:
        return result(Kind.REPLY, "in-reply-to" if threading.in_reply_to else "references")
    if is_reply_subject(subject):
        return result(Kind.REPLY, "subject")
    return result(Kind.OTHER, "")


def _safe_bounce(msg: EmailMessage) -> BounceReport | None:
    try:
        return read_bounce(msg)
    except (LookupError, ValueError, TypeError, AttributeError, IndexError, UnicodeError):
        # flufl.bounce's heuristics index into whatever they find; a message
        # malformed enough to trip them is treated as no bounce at all.
        return None


def _unreadable_bounce(msg: EmailMessage) -> BounceReport:
    try:
        returned = original_message_id(msg)
    except (LookupError, ValueError, TypeError, AttributeError, IndexError, UnicodeError):
        returned = None
    return BounceReport((), returned, "", standard=False)


def _safe_text(msg: EmailMessage) -> ReplyText | None:
    try:
        return reply_text(msg)
    except (LookupError, ValueError, TypeError, AttributeError, IndexError, UnicodeError):
        return None


def _safe_html(msg: EmailMessage) -> str | None:
    try:
        part = msg.get_body(preferencelist=("html",))
        content = part.get_content() if part is not None else None
    except (LookupError, ValueError, TypeError, AttributeError, AssertionError, UnicodeError):
        return None
    return content if isinstance(content, str) else None


def _header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except (TypeError, ValueError, IndexError, AttributeError):
        return ""
    return "" if value is None else str(value)


def _ids(value: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for found in _MESSAGE_ID.findall(value):
        seen.setdefault(f"<{found}>", None)
    return tuple(seen)


def _first_id(value: str) -> str | None:
    found = _ids(value)
    if found:
        return found[0]
    bare = value.strip()
    # Some clients omit the angle brackets (RFC 5322 requires them).
    return f"<{bare}>" if bare and " " not in bare and "@" in bare else None


def _sender(msg: EmailMessage) -> Sender:
    try:
        header = msg.get("From")
        addresses = getattr(header, "addresses", None)
        if addresses:
            first = addresses[0]
            return Sender(first.addr_spec.lower(), str(first.display_name or ""))
    except (TypeError, ValueError, IndexError, AttributeError):
        pass
    pairs = getaddresses([_header(msg, "From")])
    if pairs and pairs[0][1]:
        return Sender(pairs[0][1].lower(), pairs[0][0])
    return Sender("", "")


def _date(msg: EmailMessage) -> dt.datetime | None:
    try:
        header = msg.get("Date")
        value = getattr(header, "datetime", None)
        if value is None and header is not None:
            value = parsedate_to_datetime(str(header))
    except (TypeError, ValueError, IndexError, AttributeError):
        return None
    if not isinstance(value, dt.datetime):
        return None
    # A Date without a zone (RFC 5322 section 3.3 "-0000") is read as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)
