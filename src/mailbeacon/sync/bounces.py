"""Reading bounces: RFC 3464 delivery status reports, and the older free-text formats.

A standard report names each recipient with its Action, Status and
Diagnostic-Code. Older MTAs (qmail, Exim without DSN, old Gmail, Yahoo) write
prose; flufl.bounce, Mailman's bounce detectors, finds the failed addresses
there, and the status and diagnostic are then read from the text next to them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesHeaderParser, HeaderParser
from email.utils import parseaddr
from enum import StrEnum

from flufl.bounce import all_failures

from mailbeacon.sync.autoreplies import is_reply_subject

# How much of a diagnostic is kept: enough for any SMTP reply worth showing.
DIAGNOSTIC_LIMIT = 300

_BOUNCE_SENDERS = re.compile(
    r"^(mailer[-_]?daemon|postmaster|mail[-_]?delivery[-_]?(system|subsystem)?|mdaemon)$",
    re.IGNORECASE,
)
_BOUNCE_SUBJECTS = re.compile(
    r"undeliver|undelivered mail|delivery status notification|delivery (has )?failed|"
    r"mail delivery (failed|failure|subsystem)|returned mail|failure notice|"
    r"could not be delivered|nicht zustellbar|unzustellbar|non remis|"
    r"no se puede entregar|non recapitabile|onbestelbaar|"
    r"delivery failure|message not delivered",
    re.IGNORECASE,
)
# An enhanced status code (RFC 3463) standing on its own, not part of an IP address.
_STATUS = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_SMTP_REPLY_STATUS = re.compile(r"\b[45]\d\d[ -]#?([245]\.\d{1,3}\.\d{1,3})(?![\d.])")
_MESSAGE_ID_LINE = re.compile(r"^\s*Message-ID:\s*(<[^<>\s]+>)", re.IGNORECASE | re.MULTILINE)
_ADDRESS = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


class Action(StrEnum):
    """RFC 3464 section 2.3.3; anything unrecognised counts as failed."""

    FAILED = "failed"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    RELAYED = "relayed"
    EXPANDED = "expanded"


@dataclass(frozen=True, slots=True)
class FailedRecipient:
    address: str  # as we addressed it: Original-Recipient when given, else Final-Recipient
    action: Action
    status: str  # enhanced status code such as "5.1.1", or "" when none was given
    diagnostic: str  # the remote server's reply or the MTA's reason, one line

    @property
    def permanent(self) -> bool:
        """A failure that retrying will not fix (5.x.x, or a failure with no code)."""
        if self.action != Action.FAILED:
            return False
        return not self.status.startswith("4")


@dataclass(frozen=True, slots=True)
class BounceReport:
    recipients: tuple[FailedRecipient, ...]
    # The bounced message's own Message-ID, to match it to what we sent.
    original_message_id: str | None
    reporting_mta: str
    # True for an RFC 3464 report, False when read from a free-text bounce.
    standard: bool


def looks_like_bounce(msg: EmailMessage, sender_address: str, subject: str) -> bool:
    """Cheap signs of a non-delivery report, checked before any parsing."""
    if msg.get_content_type() == "multipart/report":
        report_type = str(msg.get_param("report-type", "") or "").lower()
        if report_type == "delivery-status":
            return True
    if msg.get("X-Failed-Recipients"):
        return True
    if is_bounce_sender(sender_address):
        return True
    # "Re: Undeliverable: ..." is a person talking about a bounce, not a bounce.
    return bool(subject and not is_reply_subject(subject) and _BOUNCE_SUBJECTS.search(subject))


def is_bounce_sender(address: str) -> bool:
    """MAILER-DAEMON, postmaster and the like: the senders of delivery reports."""
    local = address.partition("@")[0]
    return bool(local and _BOUNCE_SENDERS.match(local))


def has_bounce_subject(subject: str) -> bool:
    return bool(_BOUNCE_SUBJECTS.search(subject))


def read_bounce(msg: EmailMessage) -> BounceReport | None:
    """The failed recipients of a bounce, or None when it reports no failure."""
    report = _read_delivery_status(msg)
    if report is not None and report.recipients:
        if not any(r.action in (Action.FAILED, Action.DELAYED) for r in report.recipients):
            return None  # a success report (Action: delivered/relayed/expanded)
        return report
    recipients = _read_free_text(msg)
    if not recipients:
        return None
    return BounceReport(
        recipients=tuple(recipients),
        original_message_id=original_message_id(msg),
        reporting_mta=report.reporting_mta if report else "",
        standard=False,
    )


# -- RFC 3464 -------------------------------------------------------------------------


def _read_delivery_status(msg: EmailMessage) -> BounceReport | None:
    reporting_mta = ""
    recipients: list[FailedRecipient] = []
    found = False
    for part in msg.walk():
        if part.get_content_type() != "message/delivery-status":
            continue
        found = True
        for block in _status_blocks(part):
            if block.get("Reporting-MTA") and not reporting_mta:
                reporting_mta = _after_type(str(block.get("Reporting-MTA")))
            recipient = _recipient_from_block(block)
            if recipient is not None:
                recipients.append(recipient)
    if not found:
        return None
    return BounceReport(
        recipients=tuple(recipients),
        original_message_id=original_message_id(msg),
        reporting_mta=reporting_mta,
        standard=True,
    )


def _status_blocks(part: Message) -> Iterator[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        for block in payload:
            if isinstance(block, Message):
                yield block
        return
    # Some MTAs label the part message/delivery-status but send it encoded, which
    # leaves the blocks unparsed: read them here.
    raw = part.get_payload(decode=True)
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(payload)
    for chunk in re.split(r"\r?\n\s*\r?\n", text):
        if chunk.strip():
            yield HeaderParser().parsestr(chunk.strip() + "\n")


def _recipient_from_block(block: Message) -> FailedRecipient | None:
    final = _address_field(block.get("Final-Recipient"))
    original = _address_field(block.get("Original-Recipient"))
    if not (final or original):
        return None
    action_text = str(block.get("Action", "")).strip().lower()
    action = next((a for a in Action if action_text.startswith(a.value)), Action.FAILED)
    status_field = str(block.get("Status", ""))
    diagnostic = one_line(_after_type(str(block.get("Diagnostic-Code", ""))))
    status_match = _STATUS.search(status_field)
    status = status_match.group(0) if status_match else _status_in(diagnostic)
    return FailedRecipient(
        address=original or final,
        action=action,
        status=status,
        diagnostic=diagnostic,
    )


def _address_field(value: object) -> str:
    """``rfc822; user@example.com`` (RFC 3464 section 2.3.2) to ``user@example.com``."""
    if value is None:
        return ""
    text = str(value).strip()
    kind, sep, rest = text.partition(";")
    address = rest if sep else kind
    address = parseaddr(address.strip())[1] or address.strip().strip("<>")
    return address.lower() if "@" in address else ""


def _after_type(value: str) -> str:
    """Drop the leading type (``smtp;``, ``dns;``, ``x-unix;``) of a DSN field."""
    head, sep, rest = value.partition(";")
    if sep and re.fullmatch(r"\s*[A-Za-z][\w.-]*\s*", head):
        return rest.strip()
    return value.strip()


# -- free text --------------------------------------------------------------------


_ORIGINAL_MARKERS = re.compile(
    r"^.*(this is a copy of the message|below this line is a copy|original message|"
    r"undelivered message|returned message|message headers follow|"
    r"original message headers|kopie der nachricht).*$",
    re.IGNORECASE | re.MULTILINE,
)


def _read_free_text(msg: EmailMessage) -> list[FailedRecipient]:
    temporary, permanent = all_failures(msg)
    failed = [(a.decode("ascii", "replace").lower(), True) for a in sorted(permanent)]
    failed += [(a.decode("ascii", "replace").lower(), False) for a in sorted(temporary)]
    if not failed:
        header = str(msg.get("X-Failed-Recipients", ""))
        failed = [(a.lower(), True) for a in _ADDRESS.findall(header)]
    report = _report_text(msg)
    if not failed:
        # qmail and Yahoo list each failed address alone on a line as "<address>:".
        failed = [(a.lower(), True) for a in _LISTED_ADDRESS.findall(report)]
    if not failed:
        return []
    recipients = []
    seen = set()
    for address, is_permanent in failed:
        if address in seen:
            continue
        seen.add(address)
        diagnostic = _diagnostic_near(report, address)
        if not _SMTP_REPLY_STATUS.search(diagnostic):
            diagnostic = _server_response(report) or diagnostic
        status = _status_in(diagnostic)
        if not status and is_permanent:
            status = _status_in(report)
        recipients.append(
            FailedRecipient(
                address=address,
                action=Action.FAILED if is_permanent else Action.DELAYED,
                status=status,
                diagnostic=diagnostic,
            )
        )
    return recipients


def _report_text(msg: EmailMessage) -> str:
    """The human-readable report, cut where the returned message begins."""
    texts = []
    for part in msg.walk():
        if part.get_content_type() == "message/rfc822":
            break
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            texts.append(_part_text(part))
    text = "\n".join(texts)
    marker = _ORIGINAL_MARKERS.search(text)
    return text[: marker.start()] if marker else text


def _diagnostic_near(text: str, address: str) -> str:
    """The lines after the first mention of ``address``, up to the next blank line."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if address in line.lower():
            block = []
            rest = line.lower().split(address, 1)[1].strip(" <>:()\t")
            if rest:
                block.append(line.strip())
            for following in lines[index + 1 : index + 12]:
                if not following.strip():
                    if block:
                        break
                    continue
                if _ADDRESS.fullmatch(following.strip(" <>:")):
                    break  # the next recipient's paragraph
                block.append(following.strip())
            return one_line(" ".join(block))
    return ""


_LISTED_ADDRESS = re.compile(r"^[ \t]*<([^<>\s@]+@[^<>\s]+)>:[ \t]*$", re.MULTILINE)
_RESPONSE_INTRO = re.compile(
    r"(?:the response(?: from the remote server)? was|"
    r"the error that the other server returned was|remote server returned|"
    r"remote host said|gave this error)\s*:?",
    re.IGNORECASE,
)
_SMTP_REPLY_LINE = re.compile(r"^\s*#?[45]\d\d[ -].*$", re.MULTILINE)


def _server_response(text: str) -> str:
    """The remote server's reply as the report quotes it, when it does."""
    intro = _RESPONSE_INTRO.search(text)
    if intro is not None:
        rest = text[intro.end() :].lstrip(" \t'\"\r\n")
        paragraph = re.split(r"\r?\n\s*\r?\n", rest, maxsplit=1)[0]
        if paragraph.strip():
            return one_line(paragraph.strip(" '\"\t\r\n"))
    line = _SMTP_REPLY_LINE.search(text)
    return one_line(line.group(0).lstrip(" #")) if line else ""


def _status_in(text: str) -> str:
    reply = _SMTP_REPLY_STATUS.search(text)
    if reply:
        return reply.group(1)
    found = _STATUS.search(text)
    return found.group(0) if found else ""


def _part_text(part: Message) -> str:
    raw = part.get_payload(decode=True)
    if not isinstance(raw, bytes):
        return str(part.get_payload()).replace("\r\n", "\n")
    charset = part.get_content_charset() or "utf-8"
    try:
        text = raw.decode(charset, "replace")
    except LookupError:
        text = raw.decode("utf-8", "replace")
    return text.replace("\r\n", "\n")


def one_line(text: str, limit: int = DIAGNOSTIC_LIMIT) -> str:
    """Whitespace folded to single spaces, cut at ``limit`` characters with an ellipsis."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


# -- the returned message ---------------------------------------------------------------


def original_message_id(msg: EmailMessage) -> str | None:
    """The bounced message's Message-ID, from the attached copy or the quoted headers."""
    for part in msg.walk():
        kind = part.get_content_type()
        if kind == "message/rfc822":
            payload = part.get_payload()
            inner = payload[0] if isinstance(payload, list) and payload else None
            if isinstance(inner, Message) and inner.get("Message-ID"):
                return _clean_id(str(inner.get("Message-ID")))
        elif kind in ("text/rfc822-headers", "message/rfc822-headers"):
            raw = part.get_payload(decode=True)
            if isinstance(raw, bytes):
                headers = BytesHeaderParser().parsebytes(raw)
                if headers.get("Message-ID"):
                    return _clean_id(str(headers.get("Message-ID")))
    for part in msg.walk():
        if part.get_content_type() == "text/plain" and not part.is_multipart():
            text = _part_text(part)
            marker = _ORIGINAL_MARKERS.search(text)
            found = _MESSAGE_ID_LINE.search(text, marker.start() if marker else 0)
            if found:
                return found.group(1)
    return None


def _clean_id(value: str) -> str | None:
    found = re.search(r"<[^<>\s]+>", value)
    return found.group(0) if found else None
