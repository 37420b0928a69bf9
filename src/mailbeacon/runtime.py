"""The composition root: what one process shares, built and wired in one place.

Domains never import this module. They declare what they need from elsewhere
as protocols (``mail.ports``, ``accounts.service.SmtpProbe``) or observers
(``tracking.events.HitObserver``), raise typed events after commit
(``db.after_commit``), and this module connects the pieces:

    compose --plan_send--> messages, copies, outbox      (one unit of work)
        `--SendQueued--> OutboxWorker.wake               (after commit)
    OutboxWorker --SMTP, one transaction per copy--> recipients
    edge /t/ --Hit--> Ingest --batches--> HitPipeline: load -> classify -> apply
        `--StoredEvent--> NotificationObserver           (same transaction)
            `--LiveUpdate--> LiveBroker.publish           (after commit)
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

from mailbeacon.accounts.service import ProbeResult, SmtpParams, SmtpProbeBox
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.datadir import ensure_data_dir, load_secrets
from mailbeacon.kit.events import Dispatcher
from mailbeacon.mail.events import SendQueued
from mailbeacon.mail.mailer import test_smtp_connection
from mailbeacon.mail.ports import Instrumenter, TrackedLinks
from mailbeacon.mail.tasks import OutboxWorker
from mailbeacon.notify.live import LiveBroker, LiveUpdate
from mailbeacon.notify.observer import NotificationObserver
from mailbeacon.tracking.classify import Policy
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.ingest import Ingest
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.pipeline import HitPipeline
from mailbeacon.tracking.service import TrackingService
from mailbeacon.tracking.spool import Spool
from mailbeacon.tracking.tokens import TokenCodec, codec_from_secrets


async def probe_smtp(params: SmtpParams) -> ProbeResult:
    """The accounts domain's SMTP probe, done by the mail domain's SMTP client."""
    result = await test_smtp_connection(
        params.host, params.port, params.security, params.username, params.password
    )
    return ProbeResult(ok=result.ok, stage=result.stage, message=result.message)


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
    # The outbox worker of this process, while it runs (``serve`` starts it).
    outbox: OutboxWorker | None = None
    # False while ``serve`` waits for the database to answer and be migrated: the
    # web app then answers 503 (the tracking edge never waits).
    database_ready: bool = True

    def __post_init__(self) -> None:
        self.tracking = TrackingService(self.codec, self.settings.BASE_URL)
        self.pipeline = HitPipeline(self.database, self.policy, [NotificationObserver()])
        self.database.dispatch = self.dispatcher.dispatch
        self.dispatcher.register(LiveUpdate, lambda event: self.live.publish(event.wake))
        self.dispatcher.register(SendQueued, lambda _event: self.wake_outbox())

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        ensure_data_dir(settings.DATA_DIR)
        secrets = load_secrets(settings.DATA_DIR)
        return cls(
            settings=settings,
            database=Database(settings.database_url()),
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
            SmtpProbeBox: SmtpProbeBox(probe_smtp),
        }

    def write_batch(self, hits: list[Hit], replay: bool) -> BatchResult:
        """Store a batch of hits through the pipeline (the ingest's writer)."""
        return self.pipeline.process(hits, replay=replay)

    def make_ingest(self) -> Ingest:
        return Ingest(
            self.write_batch,
            Spool(self.settings.spool_dir),
            batch_max=self.settings.INGEST_BATCH_MAX,
            retry_seconds=self.settings.INGEST_RETRY_SECONDS,
            writers=self.settings.INGEST_WRITERS or (1 if self.database.is_sqlite else 3),
            database_ready=lambda: self.database_ready,
        )

    def make_outbox_worker(self, **options: Any) -> OutboxWorker:
        return OutboxWorker(self.database, self.settings, self.credentials, **options)

    def wake_outbox(self) -> None:
        """Tell this process's outbox worker that copies are due (safe from any thread)."""
        if self.outbox is not None:
            self.outbox.wake()
