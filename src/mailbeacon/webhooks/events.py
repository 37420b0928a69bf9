"""The events webhooks carry: their types, the facts observers turn into them, the body.

Every event is a JSON document as the Standard Webhooks specification suggests
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md,
"Payload structure"): ``type``, ``timestamp`` (when the fact happened, ISO 8601 in UTC)
and ``data``. The body is built once, when the fact is recorded, and stored: every
attempt sends and signs the same bytes under the same ``webhook-id``.

**Ordering.** Events about one recipient's copy (its failure, opens, clicks,
bounce, that recipient's replies) reach an endpoint one at a time, in the order
mailbeacon recorded them: the next is not sent until the one before it was
delivered or given up, so a receiver that was down gets them in order when it is
back. Recorded order is commit order: the hit pipeline and mailbox sync update
the copy's row (taking its lock) before they write an event about it, and a
copy's failure is recorded once its sending is over. Events
about different copies travel independently, so one busy email is not one queue;
``message.sent`` (about the whole email) and a reply from someone the email was
forwarded to are ordered per email.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from mailbeacon.kit.clock import as_utc


class EventType(StrEnum):
    MESSAGE_SENT = "message.sent"  # a send request settled with at least one copy sent
    COPY_FAILED = "copy.failed"  # a copy the mail server refused for good
    COPY_BOUNCED = "copy.bounced"  # a copy delivered, then bounced (mailbox sync)
    COPY_OPENED = "copy.opened"  # a person's first open (or every open, per endpoint)
    LINK_CLICKED = "link.clicked"  # a person's click
    REPLY_RECEIVED = "reply.received"
    AUTO_REPLY_RECEIVED = "auto_reply.received"
    # A contact's consent given, refused or withdrawn (contacts are the organisation's:
    # every endpoint in it that subscribed hears it).
    CONTACT_CONSENT_CHANGED = "contact.consent_changed"
    TEST = "webhook.test"  # "Send test event": only to the endpoint it was asked for


# What an endpoint may subscribe to, with the words the Settings page shows.
SUBSCRIBABLE: dict[EventType, str] = {
    EventType.MESSAGE_SENT: "An email was sent (once all its copies are settled)",
    EventType.COPY_FAILED: "A copy could not be delivered",
    EventType.COPY_BOUNCED: "A copy bounced",
    EventType.COPY_OPENED: "A person opened a copy (the first time)",
    EventType.LINK_CLICKED: "A person clicked a link",
    EventType.REPLY_RECEIVED: "A reply came in",
    EventType.AUTO_REPLY_RECEIVED: "An automatic reply came in",
    EventType.CONTACT_CONSENT_CHANGED: "A contact's consent was given, refused or withdrawn",
}


def new_webhook_id() -> str:
    """A ``webhook-id``: unique per event, unguessable, the same on every retry."""
    return "msg_" + secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class Fact:
    """Something an observer saw, about one user's email, to become one event."""

    type: EventType
    user_id: int
    occurred_at: datetime
    data: dict[str, Any]
    message_id: int | None = None
    copy_id: int | None = None
    # copy.opened: whether it is the copy's first open by a person; an endpoint that
    # did not ask for every open gets only those.
    first: bool = True
    # Deliveries with the same key reach an endpoint in order (see the module docstring).
    ordering_key: str = ""
    uid: str = field(default_factory=new_webhook_id)

    def key(self) -> str:
        if self.ordering_key:
            return self.ordering_key
        if self.copy_id is not None:
            return f"copy:{self.copy_id}"
        if self.message_id is not None:
            return f"message:{self.message_id}"
        return f"event:{self.uid}"


def iso(value: datetime | None) -> str | None:
    """A timestamp as the payload writes it: ISO 8601, UTC, with a Z."""
    if value is None:
        return None
    return as_utc(value).isoformat().replace("+00:00", "Z")


def payload(fact: Fact) -> str:
    """The body of the event, compact JSON (UTF-8 on the wire)."""
    return json.dumps(
        {"type": str(fact.type), "timestamp": iso(fact.occurred_at), "data": fact.data},
        separators=(",", ":"),
        ensure_ascii=False,
    )


@dataclass(frozen=True, slots=True)
class WebhooksDue:
    """Raised after commit: deliveries were written, the worker should look now rather
    than at its next poll. The rows are what count; this only saves the wait."""
