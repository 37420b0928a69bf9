"""The one way incoming mail enters mailbeacon, from IMAP and from the demo mailbox alike.

Each message is classified (``incoming.classify_message``) and matched to what
the user sent:

* a reply: by its threading headers (In-Reply-To, then References, nearest
  first) to one of the user's Message-IDs; else, for a client that dropped them
  or a provider that rewrote our Message-ID, by its sender being a recent
  recipient and its subject being ours behind a reply prefix. The recipient copy
  is the one sent to its From address; a reply from anyone else (the email was
  forwarded) is kept on the email, not on a copy;
* an automatic reply: the same, and an out-of-office without threading headers
  by its sender alone (the newest email to them, preferring one whose subject
  it quotes);
* a bounce: by the returned Message-ID, else by the failed address; each
  failed recipient's copy becomes ``bounced``.

Anything else, and anything the user sent themselves, is not stored. Storing is
idempotent (``received_mail`` is unique per user and incoming Message-ID), so
the same mail read twice changes nothing the second time.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from mailbeacon.models import ReceivedKind
from mailbeacon.sync import repository
from mailbeacon.sync.bounces import Action
from mailbeacon.sync.events import ReceivedObserver, ReceivedStored
from mailbeacon.sync.incoming import FailedRecipient, IncomingMessage, Kind, classify_message
from mailbeacon.sync.replytext import html_to_text
from mailbeacon.sync.repository import CopyRef, Owner, SentRef

# How far back a reply or bounce without a usable Message-ID is matched by address.
MATCH_WINDOW = timedelta(days=30)
# A message cannot answer an email sent after it arrived; but the mail server's clock
# (INTERNALDATE, whole seconds) and ours may disagree by a little.
CLOCK_SLACK = timedelta(minutes=10)
NEW_TEXT_LIMIT = 20_000
FULL_TEXT_LIMIT = 200_000
HTML_LIMIT = 1_000_000

_PREFIXES = re.compile(
    r"^\s*(?:(?:re|aw|sv|vs|antw|odp|r|ref|réf|rif|res|rv|odg|vá|vl|atb|ynt|fwd?|wg|tr)"
    r"\s*(?:\[\d+\])?\s*:\s*)+",
    re.IGNORECASE,
)
_KINDS = {
    Kind.REPLY: ReceivedKind.REPLY,
    Kind.AUTO_REPLY: ReceivedKind.AUTO_REPLY,
    Kind.BOUNCE: ReceivedKind.BOUNCE,
}


@dataclass(frozen=True, slots=True)
class Arrival:
    """A message as it reached the mailbox: its octets and when (IMAP INTERNALDATE)."""

    raw: bytes
    received_at: datetime


@dataclass(frozen=True, slots=True)
class _Match:
    message: SentRef
    copies: tuple[CopyRef, ...]  # the copies it concerns; empty for a forward's reply
    how: str


def dedupe_key(incoming: IncomingMessage, raw: bytes) -> str:
    """The incoming Message-ID, or a digest of the message when it has none (or a huge one)."""
    mid = incoming.threading.message_id
    if mid and len(mid) <= 255:
        return mid
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def bare_subject(subject: str) -> str:
    """The subject without reply and forward prefixes, for comparing with ours."""
    return " ".join(_PREFIXES.sub("", subject).split()).casefold()


class Receiver:
    """Classifies, matches and stores incoming mail; tells observers what it stored."""

    def __init__(self, observers: Sequence[ReceivedObserver] = ()) -> None:
        self.observers = list(observers)

    def receive(
        self,
        session: Session,
        owner: Owner,
        arrivals: Sequence[Arrival],
        *,
        source: str = "imap",
    ) -> list[ReceivedStored]:
        """Store what in ``arrivals`` answers the owner's email, in the caller's unit of work.

        Observers hear of it once, for the whole batch, inside the same transaction.
        """
        stored: list[ReceivedStored] = []
        for arrival in arrivals:
            found = self._receive_one(session, owner, arrival, source)
            if found is not None:
                stored.append(found)
        if stored:
            for observer in self.observers:
                observer.on_received(session, stored)
        return stored

    def _receive_one(
        self, session: Session, owner: Owner, arrival: Arrival, source: str
    ) -> ReceivedStored | None:
        incoming = classify_message(arrival.raw)
        kind = _KINDS.get(incoming.kind)
        if kind is None or incoming.sender.address in owner.addresses:
            return None  # not for us, or the user's own mail (sent from elsewhere)
        match = _match(session, owner, incoming, arrival.received_at)
        if match is None:
            return None
        at = arrival.received_at
        first = match.copies[0] if match.copies else None
        bounce_status = bounce_diagnostic = ""
        if kind == ReceivedKind.BOUNCE and incoming.bounce is not None:
            failed = _failed_recipients(incoming)
            detail = next((r for r in failed if first and r.address == first.address), None)
            detail = detail or (failed[0] if failed else None)
            if detail is not None:
                bounce_status, bounce_diagnostic = detail.status, detail.diagnostic
        new_text, full_text, html = _texts(incoming, kind)
        received_id = repository.insert_received(
            session,
            {
                "user_id": owner.user_id,
                "message_id": match.message.id,
                "copy_id": first.id if first else None,
                "kind": kind,
                "reason": f"{incoming.reason}; matched by {match.how}"[:200],
                "dedupe_key": dedupe_key(incoming, arrival.raw),
                "header_message_id": (incoming.threading.message_id or "")[:500],
                "from_address": incoming.sender.address[:320],
                "from_name": incoming.sender.name[:200],
                "subject": incoming.subject[:998],
                "received_at": at,
                "dated_at": incoming.date,
                "new_text": new_text,
                "full_text": full_text,
                "body_html": html,
                "bounce_status": bounce_status[:32],
                "bounce_diagnostic": bounce_diagnostic[:500],
                "source": source,
            },
        )
        if received_id is None:
            return None  # stored before: a restart, a second worker, a renumbered folder
        if kind == ReceivedKind.REPLY:
            repository.record_reply(session, match.message.id, first.id if first else None, at)
        elif kind == ReceivedKind.AUTO_REPLY:
            if first is not None:
                repository.record_auto_reply(session, first.id, at)
        else:
            repository.record_bounce(
                session, [c.id for c in match.copies], at, bounce_status, bounce_diagnostic
            )
        return ReceivedStored(
            received_id=received_id,
            kind=kind,
            user_id=owner.user_id,
            message_id=match.message.id,
            copy_id=first.id if first else None,
            from_address=incoming.sender.address,
            from_name=incoming.sender.name,
            subject=match.message.subject,
            received_at=at,
        )


# ------------------------------------------------------------------ matching


def _match(
    session: Session, owner: Owner, incoming: IncomingMessage, at: datetime
) -> _Match | None:
    if incoming.kind == Kind.BOUNCE:
        return _match_bounce(session, owner, incoming, at)
    sender = incoming.sender.address
    parents = incoming.threading.parents
    found = repository.sent_by_header_ids(session, owner.user_id, parents)
    for parent in parents:  # nearest first
        sent = found.get(parent)
        if sent is not None:
            copies = tuple(c for c in repository.copies_of(session, sent.id) if c.address == sender)
            return _Match(sent, copies[:1], "message-id")
    if not sender:
        return None
    candidates = repository.recent_copies_to(
        session, owner.user_id, [sender], at - MATCH_WINDOW, at + CLOCK_SLACK
    )
    if not candidates:
        return None
    subject = bare_subject(incoming.subject)
    if incoming.kind == Kind.REPLY:
        # Without a thread to follow, a person's mail is a reply only to an email
        # with the very subject it answers.
        for copy, sent in candidates:
            if sent.subject and bare_subject(sent.subject) == subject:
                return _Match(sent, (copy,), "sender and subject")
        return None
    for copy, sent in candidates:
        ours = bare_subject(sent.subject)
        if ours and ours in subject:
            return _Match(sent, (copy,), "sender and subject")
    copy, sent = candidates[0]
    return _Match(sent, (copy,), "sender")


def _failed_recipients(incoming: IncomingMessage) -> list[FailedRecipient]:
    if incoming.bounce is None:
        return []
    return [r for r in incoming.bounce.recipients if r.action == Action.FAILED]


def _match_bounce(
    session: Session, owner: Owner, incoming: IncomingMessage, at: datetime
) -> _Match | None:
    report = incoming.bounce
    if report is None:
        return None
    failed = _failed_recipients(incoming)
    if report.recipients and not failed:
        return None  # only delays: the server is still trying
    addresses = {r.address for r in failed}
    ids = [report.original_message_id] if report.original_message_id else []
    ids += list(incoming.threading.parents)
    found = repository.sent_by_header_ids(session, owner.user_id, ids)
    sent = next((found[i] for i in ids if i in found), None)
    if sent is not None:
        copies = repository.copies_of(session, sent.id)
        hit = tuple(c for c in copies if c.address in addresses)
        if not hit and len(copies) == 1:
            # An alias the report names by its final address (Original-Recipient
            # absent): the only recipient it can be.
            hit = (copies[0],)
        return _Match(sent, hit, "message-id") if hit else None
    if not addresses:
        return None
    candidates = repository.recent_copies_to(
        session, owner.user_id, addresses, at - MATCH_WINDOW, at + CLOCK_SLACK
    )
    if not candidates:
        return None
    newest = candidates[0][1]
    hit = tuple(copy for copy, ref in candidates if ref.id == newest.id)
    return _Match(newest, hit, "failed address")


# ------------------------------------------------------------------ texts


def _texts(incoming: IncomingMessage, kind: ReceivedKind) -> tuple[str, str, str | None]:
    """The new text, the whole text and the HTML body (as received) worth keeping."""
    if kind == ReceivedKind.BOUNCE:
        return "", "", None
    text = incoming.text
    new = text.new_text[:NEW_TEXT_LIMIT] if text else ""
    full = text.full_text[:FULL_TEXT_LIMIT] if text else ""
    html = incoming.html[:HTML_LIMIT] if incoming.html is not None else None
    if html is not None and not full:
        full = html_to_text(html)[0][:FULL_TEXT_LIMIT]
    return new, full, html
