"""Events the mail domain raises after commit (``db.after_commit``), and the typed facts it
hands its observers inside the transaction that records them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sqlalchemy import Connection


@dataclass(frozen=True, slots=True)
class SendQueued:
    """Copies of this message are due now: the outbox worker should look at once rather
    than at its next poll."""

    message_id: int


@dataclass(frozen=True, slots=True)
class MessageDelivered:
    """Every copy of this message is settled and its Sent-folder copy, if the mailbox has
    IMAP, is queued (``sent_folder_copies``, same transaction): the sync worker should look
    at once. The row is what counts; this only saves waiting for the worker's next poll."""

    message_id: int


# ------------------------------------------------------------------ for observers
#
# What the send path hands to other domains (webhooks) inside the transaction that
# records it, as tracking.events does for the hit pipeline: observers write with the
# change they report, so a rolled-back change reports nothing.


@dataclass(frozen=True, slots=True)
class CopyOutcome:
    """How one recipient's copy ended its send request."""

    copy_id: int
    address: str
    kind: str  # to, cc or bcc
    status: str  # sent, failed or unknown (a CopyStatus value)
    reply: str  # the mail server's last answer
    sent_at: datetime | None


@dataclass(frozen=True, slots=True)
class MessageSettled:
    """A send request none of whose copies is pending any more."""

    message_id: int
    user_id: int
    subject: str
    message_id_header: str
    sent_at: datetime | None  # the first copy's; None if none was sent
    copies: tuple[CopyOutcome, ...]


class DeliveryObserver(Protocol):
    """Reacts to settled send requests, inside the transaction that closes them."""

    def on_messages_settled(self, conn: Connection, settled: Sequence[MessageSettled]) -> None:
        """Called with the requests one transaction closed, in message id order. A request
        reopened (a copy sent again on its sender's say) is settled again later."""
