"""ORM models, one module per aggregate; importing this package registers them all."""

from mailbeacon.models.account import ApiToken, Organisation, SignInAttempt, User, UserSession
from mailbeacon.models.base import Base
from mailbeacon.models.contact import Contact
from mailbeacon.models.event import EventKind, EventLabel, LinkClickStat, TrackingEvent
from mailbeacon.models.mailbox import MailboxConnection, Security
from mailbeacon.models.message import (
    CopyStatus,
    Message,
    MessageLink,
    RecipientCopy,
    RecipientKind,
    TrackingDecision,
)
from mailbeacon.models.notification import Notification, NotificationKind
from mailbeacon.models.outbox import DemoMessage, OutboxEntry

__all__ = [
    "ApiToken",
    "Base",
    "Contact",
    "CopyStatus",
    "DemoMessage",
    "EventKind",
    "EventLabel",
    "LinkClickStat",
    "MailboxConnection",
    "Message",
    "MessageLink",
    "Notification",
    "NotificationKind",
    "Organisation",
    "OutboxEntry",
    "RecipientCopy",
    "RecipientKind",
    "Security",
    "SignInAttempt",
    "TrackingDecision",
    "TrackingEvent",
    "User",
    "UserSession",
]
