"""ORM models, one module per aggregate; importing this package registers them all."""

from mailbeacon.models.account import (
    ApiToken,
    Invitation,
    Organisation,
    SignInAttempt,
    User,
    UserSession,
)
from mailbeacon.models.base import Base
from mailbeacon.models.contact import Contact
from mailbeacon.models.event import (
    HUMAN_SOURCE_OPENS,
    EventKind,
    EventLabel,
    LinkClickStat,
    TrackingEvent,
)
from mailbeacon.models.mailbox import MailboxConnection, Security
from mailbeacon.models.message import (
    CopyBody,
    CopyStatus,
    Message,
    MessageAttachment,
    MessageLink,
    RecipientCopy,
    RecipientKind,
    TrackingDecision,
)
from mailbeacon.models.notification import Notification, NotificationKind
from mailbeacon.models.outbox import DemoMessage, OutboxEntry
from mailbeacon.models.privacy import (
    AnonymousHit,
    AuditEntry,
    ConsentMethod,
    ConsentRecord,
    ConsentState,
    ErasedAddress,
    TrackingMode,
    UserRole,
)
from mailbeacon.models.sync import (
    ReceivedKind,
    ReceivedMail,
    SentCopyStatus,
    SentFolderCopy,
    SyncState,
)
from mailbeacon.models.webhook import (
    DeliveryStatus,
    WebhookDelivery,
    WebhookEndpoint,
    WebhookEvent,
    WebhookScope,
)

__all__ = [
    "HUMAN_SOURCE_OPENS",
    "AnonymousHit",
    "ApiToken",
    "AuditEntry",
    "Base",
    "ConsentMethod",
    "ConsentRecord",
    "ConsentState",
    "Contact",
    "CopyBody",
    "CopyStatus",
    "DeliveryStatus",
    "DemoMessage",
    "ErasedAddress",
    "EventKind",
    "EventLabel",
    "Invitation",
    "LinkClickStat",
    "MailboxConnection",
    "Message",
    "MessageAttachment",
    "MessageLink",
    "Notification",
    "NotificationKind",
    "Organisation",
    "OutboxEntry",
    "ReceivedKind",
    "ReceivedMail",
    "RecipientCopy",
    "RecipientKind",
    "Security",
    "SentCopyStatus",
    "SentFolderCopy",
    "SignInAttempt",
    "SyncState",
    "TrackingDecision",
    "TrackingEvent",
    "TrackingMode",
    "User",
    "UserRole",
    "UserSession",
    "WebhookDelivery",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookScope",
]
