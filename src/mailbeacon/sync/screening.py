"""Which messages of a mailbox are worth reading whole, judged from their headers alone.

A first sync may meet tens of thousands of messages, nearly all of them
nothing to mailbeacon. Their header blocks are fetched in batches and read
here with a few regular expressions (a full RFC 5322 parse costs five to ten
times as much): only a message that threads under one of the user's emails,
comes from someone the user recently wrote to, or may be a bounce is fetched
whole and classified properly (``receiving``). The test over-approximates: a
message chosen here may still turn out to be nothing; a message left out here
could never have matched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.header import decode_header, make_header
from email.utils import parseaddr

from sqlalchemy.orm import Session

from mailbeacon.sync import repository
from mailbeacon.sync.autoreplies import is_reply_subject
from mailbeacon.sync.bounces import has_bounce_subject, is_bounce_sender
from mailbeacon.sync.receiving import MATCH_WINDOW
from mailbeacon.sync.repository import Owner

_WANTED_FIELDS = frozenset(
    {"from", "subject", "in-reply-to", "references", "content-type", "x-failed-recipients"}
)
# A field and its continuation lines (RFC 5322 section 2.2.3).
_FIELD = re.compile(r"^([!-9;-~]+)[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.MULTILINE)
_MESSAGE_ID = re.compile(r"<([^<>\s]+)>")
_REPORT = re.compile(r"multipart/report", re.IGNORECASE)
_ANGLE_ADDRESS = re.compile(r"<\s*([^<>\s]+@[^<>\s]+?)\s*>")
_BARE_ADDRESS = re.compile(r"[^\s<>,;:@]+@[^\s<>,;:]+")


@dataclass(frozen=True, slots=True)
class HeaderFacts:
    uid: int
    parents: tuple[str, ...]  # In-Reply-To and References ids
    sender: str  # the From address, lower-cased; "" when unreadable
    maybe_bounce: bool


def read_header_facts(uid: int, block: bytes) -> HeaderFacts:
    """What screening needs from one header block (never raises on malformed input)."""
    text = block.decode("latin-1")
    fields: dict[str, str] = {}
    for found in _FIELD.finditer(text):
        name = found.group(1).lower()
        if name in _WANTED_FIELDS and name not in fields:
            fields[name] = " ".join(found.group(2).split())
    parents = tuple(
        dict.fromkeys(
            f"<{m}>"
            for m in _MESSAGE_ID.findall(
                fields.get("in-reply-to", "") + fields.get("references", "")
            )
        )
    )
    sender = _address(fields.get("from", ""))
    maybe_bounce = (
        bool(_REPORT.search(fields.get("content-type", "")))
        or "x-failed-recipients" in fields
        or is_bounce_sender(sender)
    )
    if not maybe_bounce:
        subject = _decoded(fields.get("subject", ""))
        maybe_bounce = has_bounce_subject(subject) and not is_reply_subject(subject)
    return HeaderFacts(uid, parents, sender, maybe_bounce)


def _address(value: str) -> str:
    """The From address, lower-cased. A quoted display name may hold anything, angle
    brackets included: only then is the header parsed properly (ten times the cost)."""
    if '"' in value or "(" in value:
        return parseaddr(value)[1].lower()
    found = _ANGLE_ADDRESS.search(value) or _BARE_ADDRESS.search(value)
    return (
        (found.group(1) if found.re is _ANGLE_ADDRESS else found.group(0)).lower() if found else ""
    )


def _decoded(value: str) -> str:
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, ValueError, UnicodeError):
        return value


def worth_reading(
    session: Session, owner: Owner, facts: Sequence[HeaderFacts], now: datetime
) -> list[int]:
    """The UIDs to fetch whole: two queries for the whole batch, whatever its size."""
    wanted: set[int] = set()
    parents = {p for f in facts for p in f.parents}
    ours = set(repository.sent_by_header_ids(session, owner.user_id, parents))
    unsure: list[HeaderFacts] = []
    for f in facts:
        if f.maybe_bounce or ours.intersection(f.parents):
            wanted.add(f.uid)
        elif f.sender and f.sender not in owner.addresses:
            unsure.append(f)
    known = repository.recent_recipients(
        session, owner.user_id, {f.sender for f in unsure}, now - MATCH_WINDOW
    )
    wanted.update(f.uid for f in unsure if f.sender in known)
    return sorted(wanted)
