"""Settings from MAILBEACON_* environment variables, with embedded-mode defaults."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The built-in demo mailbox listens here (loopback only; see mail/demo.py).
DEMO_SMTP_HOST = "127.0.0.1"


# Beside the attachments: the HTML and text bodies (5 MB of UTF-8 each at most, which
# JSON may escape to twice that) and the form's own fields.
_BODIES_ROOM = 24 * 1024 * 1024


def send_request_room(attachment_bytes: int) -> int:
    """The smallest send request limit that lets ``attachment_bytes`` of files through,
    base64-encoded as the JSON API takes them (4 octets for every 3)."""
    if attachment_bytes == 0:
        return 1024
    return -(-attachment_bytes // 3) * 4 + _BODIES_ROOM


# SQLite's page cache per connection, in MiB; SQLite's own default is 2 (see Settings).
DEFAULT_SQLITE_CACHE_MB = 64
# Hits one transaction of the journal consumer carries unless INGEST_BATCH_MAX says
# otherwise (see Settings).
DEFAULT_INGEST_BATCH_SQLITE = 5000
DEFAULT_INGEST_BATCH_POSTGRESQL = 20000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MAILBEACON_", extra="ignore")

    # Everything the product keeps on disk (SQLite database, keys, hit journal) lives here.
    DATA_DIR: Path = Path("var")
    # Empty means the embedded SQLite database inside DATA_DIR.
    DATABASE_URL: str = ""
    # Embedded SQLite: each connection's page cache, in MiB, taken as pages are read.
    # SQLite's default of 2 MiB holds fewer pages than one batch of the hit consumer
    # dirties (its events' copy and email indexes, at random places): at 64 the
    # events' insert took a quarter less time (bench/README.md).
    SQLITE_CACHE_MB: int = Field(default=DEFAULT_SQLITE_CACHE_MB, ge=1)
    # The public address that goes into emails; the tracking edge answers under /t/.
    BASE_URL: str = "http://127.0.0.1:8000"
    HOST: str = "127.0.0.1"
    PORT: int = 8000
    # The HTTP server of `serve` (its --server): granian handles HTTP in Rust, outside
    # the interpreter lock; bench/edge.py measures both beside nginx.
    SERVER: Literal["uvicorn", "granian"] = "uvicorn"
    # `serve` applies the migrations when it starts (and again when a database that
    # was away comes back). Off: the operator runs `mailbeacon db upgrade`.
    MIGRATE_ON_START: bool = True

    # How many reverse proxies in front append to X-Forwarded-For: the client is the
    # address the nearest untrusted hop gave, TRUSTED_PROXIES entries from the right
    # (0: X-Forwarded-For is ignored, the peer address is the client).
    TRUSTED_PROXIES: int = Field(default=0, ge=0, le=16)
    # Deprecated: true means TRUSTED_PROXIES=1.
    TRUST_FORWARDED_FOR: bool = False

    # Request bodies are refused above these sizes before they are read: most
    # requests are small forms or JSON; sending an email (compose, the API) may
    # carry large bodies and attachments, so its limit must leave room for them: the
    # attachments base64-encoded (the API's JSON) and bodies of up to 5 MB each.
    MAX_REQUEST_BYTES: int = Field(default=256 * 1024, ge=1024)
    MAX_SEND_REQUEST_BYTES: int = Field(default=64 * 1024 * 1024, ge=1024)
    # The files of one email together, in octets (shown in compose). Most mail servers
    # refuse messages over 25 MB, and base64 makes attachments a third larger on the way.
    MAX_ATTACHMENT_BYTES: int = Field(default=20_000_000, ge=0)

    # Mail servers (Test connection, sending, sync) and webhook receivers may be on
    # private networks (RFC 1918, ULA) only if the operator allows it; link-local
    # and cloud metadata addresses never (kit/netpolicy.py has the rules and sources).
    ALLOW_PRIVATE_NETWORKS: bool = False
    # Mail servers on this machine (127.0.0.0/8, ::1), e.g. a self-hosted install
    # sending through its own Postfix. Off, only the built-in demo mailbox may use
    # loopback: otherwise any user could probe the services this machine runs.
    ALLOW_LOOPBACK_MAIL_SERVERS: bool = False
    # Webhook receivers on this machine (127.0.0.0/8, ::1): off, a user could make the
    # server post to the services it runs itself.
    ALLOW_LOOPBACK_WEBHOOKS: bool = False

    # Webhooks. `serve` runs the delivery worker with the outbox worker (RUN_WORKER).
    # A failed delivery is tried again after WEBHOOK_BACKOFF_SECONDS, then twice as long
    # each time (at most WEBHOOK_BACKOFF_CAP_SECONDS), until WEBHOOK_RETRY_HOURS after the
    # event; an endpoint failing for WEBHOOK_DISABLE_HOURS (or answering 410) is disabled.
    WEBHOOK_CONCURRENCY: int = Field(default=4, ge=1, le=64)
    WEBHOOK_TIMEOUT_SECONDS: float = Field(default=10.0, gt=0)
    WEBHOOK_BACKOFF_SECONDS: float = Field(default=10.0, ge=0)
    WEBHOOK_BACKOFF_CAP_SECONDS: float = Field(default=6 * 3600.0, gt=0)
    WEBHOOK_RETRY_HOURS: float = Field(default=24.0, gt=0)
    WEBHOOK_DISABLE_HOURS: float = Field(default=24.0, gt=0)
    # Delivered and given-up deliveries (and their events) are kept this long for the log.
    WEBHOOK_LOG_DAYS: int = Field(default=30, ge=1)

    # GET /metrics (Prometheus) answers loopback clients; with a token set, also anyone
    # sending `Authorization: Bearer <token>` (a scraper on another machine).
    METRICS_TOKEN: str = ""

    # Classification thresholds.
    TOO_FAST_SECONDS: float = Field(default=5.0, ge=0)
    BURST_SECONDS: float = Field(default=5.0, ge=0)
    BURST_LINKS: int = Field(default=2, ge=2)
    DUPLICATE_SECONDS: float = Field(default=10.0, ge=0)

    # Ingest. The edge answers once a hit is in this process's journal (DATA_DIR/journal,
    # group commit: one write and fdatasync per batch of hits); a consumer moves the
    # journal into the database. `serve` runs one unless RUN_INGEST is off (then run
    # `mailbeacon ingest`, as many as you like: they share the segments).
    RUN_INGEST: bool = True
    # How many hits one database transaction of the consumer may carry; unset, 5,000 on
    # SQLite and 20,000 on PostgreSQL. Larger batches store a backlog faster (each page
    # of the events' indexes a batch writes carries more of its hits), but on SQLite a
    # batch holds the database's one write lock while it is stored, and every other
    # writer waits for it; PostgreSQL locks only the rows a batch updates
    # (bench/README.md: the consumer, sixth round).
    INGEST_BATCH_MAX: int | None = Field(default=None, ge=1)
    # Seconds before the consumer tries the database again after it failed (the
    # hits wait in the journal meanwhile).
    INGEST_RETRY_SECONDS: float = Field(default=1.0, gt=0)
    # A writer starts a new segment past this size or age, so that consumed
    # segments can be deleted and other processes' consumers may take them.
    JOURNAL_SEGMENT_BYTES: int = Field(default=64 * 1024 * 1024, ge=64 * 1024)
    JOURNAL_SEGMENT_SECONDS: float = Field(default=2.0, gt=0)

    # Sending. `serve` runs the outbox worker unless RUN_WORKER is off (then run
    # `mailbeacon worker` separately), and the demo mailbox's loopback SMTP server
    # on DEMO_SMTP_PORT (0 = off).
    RUN_WORKER: bool = True
    DEMO_SMTP_PORT: int = Field(default=2525, ge=0, le=65535)
    # SMTP sessions one worker keeps busy at once (also the most per mailbox).
    SEND_CONCURRENCY: int = Field(default=3, ge=1, le=64)
    # Temporary failures (4xx, connection lost) are retried this many times in all,
    # waiting SEND_BACKOFF_SECONDS, then twice as long each time (at most an hour).
    SEND_MAX_ATTEMPTS: int = Field(default=8, ge=1)
    SEND_BACKOFF_SECONDS: float = Field(default=30.0, ge=0)
    # Seconds to wait for each SMTP answer.
    SEND_TIMEOUT_SECONDS: float = Field(default=60.0, gt=0)
    # A copy still `sending` after this long is marked `unknown` even if its worker
    # seems alive; far beyond any SMTP timeout.
    SEND_LEASE_SECONDS: float = Field(default=3600.0, gt=0)

    # Live updates (the bell, the Mail tab icons): a stream ends after this many
    # seconds and the browser reconnects at once, so no connection outlives a
    # graceful shutdown for long; a keep-alive (and a recount of unread
    # notifications) goes out every LIVE_HEARTBEAT_SECONDS.
    LIVE_STREAM_SECONDS: float = Field(default=300.0, gt=0)
    LIVE_HEARTBEAT_SECONDS: float = Field(default=15.0, gt=0)

    # Mailbox sync (IMAP). `serve` runs the sync worker unless RUN_SYNC is off (then
    # run `mailbeacon sync`). INBOX is watched with IDLE where the server offers it
    # and SYNC_USE_IDLE is on, else read every SYNC_POLL_SECONDS; the first sync of a
    # mailbox reads SYNC_FIRST_DAYS back. A failure (server down, wrong password) is
    # retried after SYNC_BACKOFF_SECONDS, then twice as long each time (at most an
    # hour). A worker holds a mailbox for SYNC_LEASE_SECONDS at a time, renewing it.
    RUN_SYNC: bool = True
    SYNC_USE_IDLE: bool = True
    SYNC_POLL_SECONDS: float = Field(default=60.0, gt=0)
    SYNC_FIRST_DAYS: int = Field(default=30, ge=0, le=3650)
    SYNC_BACKOFF_SECONDS: float = Field(default=30.0, ge=0)
    SYNC_LEASE_SECONDS: float = Field(default=120.0, ge=5)
    # Mailboxes one worker keeps open at once.
    SYNC_CONCURRENCY: int = Field(default=4, ge=1, le=64)
    SYNC_TIMEOUT_SECONDS: float = Field(default=30.0, gt=0)
    # Saving the sender's copy to Sent is tried this many times before it is given up.
    SENT_COPY_MAX_ATTEMPTS: int = Field(default=10, ge=1)

    @model_validator(mode="after")
    def _room_for_attachments(self) -> Settings:
        needed = send_request_room(self.MAX_ATTACHMENT_BYTES)
        if needed > self.MAX_SEND_REQUEST_BYTES:
            raise ValueError(
                f"MAX_SEND_REQUEST_BYTES ({self.MAX_SEND_REQUEST_BYTES}) must be at least "
                f"{needed} to carry MAX_ATTACHMENT_BYTES ({self.MAX_ATTACHMENT_BYTES}) of "
                "attachments base64-encoded with the bodies of the email"
            )
        return self

    @property
    def proxy_hops(self) -> int:
        """How many X-Forwarded-For entries, from the right, our own proxies wrote.

        A property rather than a validator that rewrites TRUSTED_PROXIES: copies of the
        settings (``model_copy``) skip validators, and every reader must agree."""
        return max(self.TRUSTED_PROXIES, int(self.TRUST_FORWARDED_FOR))

    def database_url(self) -> str:
        return self.DATABASE_URL or f"sqlite:///{self.DATA_DIR.resolve() / 'mailbeacon.db'}"

    @property
    def journal_dir(self) -> Path:
        return self.DATA_DIR / "journal"

    @property
    def legacy_spool_dir(self) -> Path:
        """Where versions before the journal kept hits while the database was away."""
        return self.DATA_DIR / "spool"
