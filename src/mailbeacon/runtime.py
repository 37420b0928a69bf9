"""The parts one process shares: database, key ring, network map, ingest."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from functools import partial

from mailbeacon.accounts.credentials import CredentialBox
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.datadir import ensure_data_dir, load_secrets
from mailbeacon.notify.live import LiveBroker
from mailbeacon.tracking.classify import Policy
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.ingest import Ingest
from mailbeacon.tracking.networks import NetworkMap
from mailbeacon.tracking.repository import WriteResult, write_hits
from mailbeacon.tracking.spool import Spool
from mailbeacon.tracking.tokens import TokenCodec, codec_from_secrets


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

    def write_batch(self, hits: list[Hit], replay: bool) -> WriteResult:
        result = write_hits(self.database.engine, hits, self.policy, replay=replay)
        # Committed: wake this process's live streams (on PostgreSQL the writer's
        # NOTIFY already did, and this does nothing).
        self.live.publish(result.wake)
        return result

    def make_ingest(self) -> Ingest:
        return Ingest(
            partial(Runtime.write_batch, self),
            Spool(self.settings.spool_dir),
            batch_max=self.settings.INGEST_BATCH_MAX,
            retry_seconds=self.settings.INGEST_RETRY_SECONDS,
            writers=self.settings.INGEST_WRITERS or (1 if self.database.is_sqlite else 3),
        )
