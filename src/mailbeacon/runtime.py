"""The composition root: what one process shares, built and wired in one place.

Domains never import this module. They declare what they need from elsewhere
as protocols (``mail.ports``, ``accounts.service.SmtpProbe``) or observers
(``tracking.events.HitObserver``), raise typed events after commit
(``db.after_commit``), and this module connects the pieces:

    compose --plan_send--> messages, copies, outbox      (one unit of work)
        `--SendQueued--> OutboxWorker.wake               (after commit)
    OutboxWorker --SMTP, one transaction per copy--> recipients
    edge /t/ --Hit--> journal (fdatasync, then the answer)
    journal --consumer (serve, `mailbeacon ingest`), batches--> HitPipeline:
        load -> classify -> apply
        |  gate: PrivacyGate (privacy) rules what may be kept, per copy
        |  forwarded: ForwardedOpens (privacy) marks opens before they are written
        `--StoredEvent--> NotificationObserver, HitWebhooks (same transaction)
    plan_send --ConsentPolicy--> ConsentRules (privacy): untracked without consent
            `--LiveUpdate--> LiveBroker.publish           (after commit)
    OutboxWorker settles a message --> sent_folder_copies row (same transaction)
        |  MessageSettled --> SendWebhooks: webhook events (same transaction)
        `--MessageDelivered--> SyncWorker.wake, WebhookWorker.wake (after commit)
    SyncWorker --IMAP--> Sent copy (mail's SentCopies) and INBOX --> Receiver
        `--ReceivedStored--> ReplyNotifier, ReceivedWebhooks (same transaction)
    webhook events --WebhooksDue--> WebhookWorker.wake    (after commit)
    WebhookWorker --HTTP, signed--> receivers; disables --> SettingsNotices (notify)
    consent recorded, contact erased --ConsentChanged, ContactErased--> ContactWebhooks
        (in_transaction: observed before the commit, in the same transaction)
"""

from __future__ import annotations

import asyncio
import base64
import functools
from dataclasses import dataclass, field
from typing import Any

from mailbeacon.accounts.service import (
    ImapParams,
    ImapProbeBox,
    ImapProbeResult,
    ProbeResult,
    SmtpParams,
    SmtpProbeBox,
)
from mailbeacon.config import (
    DEFAULT_INGEST_BATCH_POSTGRESQL,
    DEFAULT_INGEST_BATCH_SQLITE,
    Settings,
)
from mailbeacon.db import Database
from mailbeacon.kit.clock import as_utc
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.datadir import ensure_data_dir, load_secrets
from mailbeacon.kit.events import Dispatcher, Observers
from mailbeacon.kit.metrics import SyncHealth
from mailbeacon.kit.netpolicy import mail_server_policy
from mailbeacon.mail.events import MessageDelivered, SendQueued
from mailbeacon.mail.mailer import test_smtp_connection
from mailbeacon.mail.ports import ConsentPolicy, Instrumenter, TrackedLinks
from mailbeacon.mail.sent_copy import SentCopies
from mailbeacon.mail.tasks import OutboxWorker
from mailbeacon.models import Security
from mailbeacon.notify.live import LiveBroker, LiveUpdate
from mailbeacon.notify.notices import SettingsNotices
from mailbeacon.notify.observer import NotificationObserver
from mailbeacon.notify.replies import ReplyNotifier
from mailbeacon.privacy.events import ConsentChanged, ContactErased
from mailbeacon.privacy.forwarding import ForwardedOpens
from mailbeacon.privacy.gate import PrivacyGate
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.policy import ConsentRules
from mailbeacon.sync import repository as sync_repository
from mailbeacon.sync.imap import ImapSettings
from mailbeacon.sync.probe import probe_mailbox
from mailbeacon.sync.receiving import Receiver
from mailbeacon.sync.tasks import SyncWorker
from mailbeacon.tracking.classify import Policy
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.ingest import Ingest
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.pipeline import HitPipeline
from mailbeacon.tracking.service import TrackingService
from mailbeacon.tracking.tokens import TokenCodec, codec_from_secrets
from mailbeacon.webhooks.events import WebhooksDue
from mailbeacon.webhooks.observers import (
    ContactWebhooks,
    HitWebhooks,
    ReceivedWebhooks,
    SendWebhooks,
)
from mailbeacon.webhooks.tasks import WebhookWorker


async def probe_smtp(settings: Settings, params: SmtpParams) -> ProbeResult:
    """The accounts domain's SMTP probe, done by the mail domain's SMTP client under the
    operator's address policy (loopback only for the demo mailbox, unless allowed)."""
    result = await test_smtp_connection(
        params.host,
        params.port,
        params.security,
        params.username,
        params.password,
        policy=mail_server_policy(settings, demo=params.demo),
        # Someone is waiting for the page: no longer than a send would wait, at most 10 s.
        timeout=min(10.0, settings.SEND_TIMEOUT_SECONDS),
    )
    return ProbeResult(ok=result.ok, stage=result.stage, message=result.message)


async def probe_imap(settings: Settings, params: ImapParams) -> ImapProbeResult:
    """The accounts domain's IMAP probe, done by the sync domain's IMAP client (in a thread:
    it blocks) under the operator's address policy."""
    found = await asyncio.to_thread(
        probe_mailbox,
        ImapSettings(
            host=params.host,
            port=params.port,
            security=Security(params.security),
            username=params.username,
            password=params.password,
            timeout=settings.SYNC_TIMEOUT_SECONDS,
            policy=mail_server_policy(settings),
        ),
    )
    return ImapProbeResult(
        ok=found.ok,
        stage=found.stage,
        message=found.message,
        folders=found.folders,
        sent_folder=found.sent_folder,
    )


@dataclass
class Runtime:
    settings: Settings
    database: Database
    codec: TokenCodec
    networks: NetworkMap
    policy: Policy
    secrets: dict[str, object]
    # Wakes the browsers of users whose tracking data changed (notify/live.py).
    live: LiveBroker = field(default_factory=LiveBroker)
    dispatcher: Dispatcher = field(default_factory=Dispatcher)
    # What other domains record in the transaction that raised the event (db.in_transaction).
    observers: Observers = field(default_factory=Observers)
    # The outbox worker of this process, while it runs (``serve`` starts it).
    outbox: OutboxWorker | None = None
    # The sync worker of this process, while it runs (``serve`` starts it).
    sync: SyncWorker | None = None
    # The webhook worker of this process, while it runs (``serve`` starts it).
    webhooks: WebhookWorker | None = None
    # False while ``serve`` waits for the database to answer and be migrated: the
    # web app then answers 503 (the tracking edge never waits).
    database_ready: bool = True

    def __post_init__(self) -> None:
        self.tracking = TrackingService(self.codec, self.settings.BASE_URL)
        self.privacy_keys = PrivacyKeys(self.secret_bytes("session_secret"))
        self.consent = ConsentRules(self.privacy_keys, self.settings.BASE_URL)
        self.pipeline = HitPipeline(
            self.database,
            self.policy,
            [NotificationObserver(), HitWebhooks()],
            gate=PrivacyGate(),
            forwarded=ForwardedOpens(),
        )
        # Incoming mail, from IMAP and from the demo mailbox alike.
        self.receiver = Receiver([ReplyNotifier(), ReceivedWebhooks()])
        self.database.dispatch = self.dispatcher.dispatch
        self.database.observe = self.observers.observe
        contacts = ContactWebhooks()
        self.observers.register(ConsentChanged, contacts.on_consent_changed)
        self.observers.register(ContactErased, contacts.on_contact_erased)
        self.dispatcher.register(LiveUpdate, lambda event: self.live.publish(event.wake))
        self.dispatcher.register(SendQueued, lambda _event: self.wake_outbox())
        self.dispatcher.register(MessageDelivered, lambda _event: self.wake_sync())
        self.dispatcher.register(MessageDelivered, lambda _event: self.wake_webhooks())
        self.dispatcher.register(WebhooksDue, lambda _event: self.wake_webhooks())

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        ensure_data_dir(settings.DATA_DIR)
        secrets = load_secrets(settings.DATA_DIR)
        return cls(
            settings=settings,
            database=Database(settings.database_url(), sqlite_cache_mb=settings.SQLITE_CACHE_MB),
            codec=codec_from_secrets(secrets),
            networks=NetworkMap.load(settings.DATA_DIR),
            policy=Policy(
                too_fast_seconds=settings.TOO_FAST_SECONDS,
                burst_seconds=settings.BURST_SECONDS,
                burst_links=settings.BURST_LINKS,
                duplicate_seconds=settings.DUPLICATE_SECONDS,
            ),
            secrets=secrets,
            live=LiveBroker(settings.database_url()),
        )

    def secret_bytes(self, name: str) -> bytes:
        value = self.secrets[name]
        assert isinstance(value, str)
        return base64.urlsafe_b64decode(value)

    @property
    def credentials(self) -> CredentialBox:
        return CredentialBox(self.secret_bytes("credentials_key"))

    def services(self) -> dict[object, Any]:
        """What the web app's routes may ask for (``web.deps.provided``), by type or protocol."""
        return {
            Settings: self.settings,
            Database: self.database,
            TokenCodec: self.codec,
            CredentialBox: self.credentials,
            LiveBroker: self.live,
            Instrumenter: self.tracking,
            TrackedLinks: self.tracking,
            SmtpProbeBox: SmtpProbeBox(functools.partial(probe_smtp, self.settings)),
            ImapProbeBox: ImapProbeBox(functools.partial(probe_imap, self.settings)),
            Receiver: self.receiver,
            PrivacyKeys: self.privacy_keys,
            ConsentPolicy: self.consent,
        }

    def write_batch(self, hits: list[Hit], replay: bool) -> BatchResult:
        """Store a batch of hits through the pipeline."""
        return self.pipeline.process(hits, replay=replay)

    def store_journal_batch(self, hits: list[Hit]) -> BatchResult:
        """The journal consumer's store: exactly once by uid, as a journal may be
        delivered again after a crash between commit and checkpoint."""
        return self.pipeline.process(hits, replay=True)

    def make_ingest(self, *, consume: bool | None = None) -> Ingest:
        """This process's journal (the edge appends to it) and, unless ``consume`` is
        False (default: RUN_INGEST), a consumer moving the journal into the database."""
        settings = self.settings
        return Ingest(
            settings.journal_dir,
            self.store_journal_batch,
            consume=settings.RUN_INGEST if consume is None else consume,
            batch_size=self.ingest_batch_max(),
            retry_seconds=settings.INGEST_RETRY_SECONDS,
            segment_bytes=settings.JOURNAL_SEGMENT_BYTES,
            segment_seconds=settings.JOURNAL_SEGMENT_SECONDS,
            database_ready=lambda: self.database_ready,
            legacy_spool=settings.legacy_spool_dir,
        )

    def ingest_batch_max(self) -> int:
        """INGEST_BATCH_MAX, or the default for this database."""
        if self.settings.INGEST_BATCH_MAX is not None:
            return self.settings.INGEST_BATCH_MAX
        if self.database.is_sqlite:
            return DEFAULT_INGEST_BATCH_SQLITE
        return DEFAULT_INGEST_BATCH_POSTGRESQL

    def make_outbox_worker(self, **options: Any) -> OutboxWorker:
        # Settled send requests become webhook events in the transaction closing them.
        options.setdefault("delivery_observers", [SendWebhooks()])
        return OutboxWorker(self.database, self.settings, self.credentials, **options)

    def wake_outbox(self) -> None:
        """Tell this process's outbox worker that copies are due (safe from any thread)."""
        if self.outbox is not None:
            self.outbox.wake()

    def make_sync_worker(self, **options: Any) -> SyncWorker:
        options.setdefault("receiver", self.receiver)
        return SyncWorker(
            self.database, self.settings, self.credentials, sent_copies=SentCopies(), **options
        )

    def wake_sync(self) -> None:
        """Tell this process's sync worker that a Sent copy is due (safe from any thread)."""
        if self.sync is not None:
            self.sync.wake()

    def make_webhook_worker(self, **options: Any) -> WebhookWorker:
        return WebhookWorker(
            self.database, self.settings, self.credentials, SettingsNotices(), **options
        )

    def wake_webhooks(self) -> None:
        """Tell this process's webhook worker that deliveries are due (safe from any thread)."""
        if self.webhooks is not None:
            self.webhooks.wake()

    def sync_health(self) -> SyncHealth | None:
        """The state of mailbox sync for the metrics (None while the database is away)."""
        if not self.database_ready:
            return None
        with self.database.engine.connect() as conn:
            ok, failing, last_success = sync_repository.sync_health(conn)
        return SyncHealth(ok, failing, as_utc(last_success).timestamp() if last_success else None)
