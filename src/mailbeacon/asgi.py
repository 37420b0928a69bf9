"""Outermost entry point: /t/* goes to the tracking edge, the rest to the web app.

The process starts whether or not the database answers. The tracking edge never
needs it (hits go to the local journal, which a consumer stores into the database
whenever it answers); the web app answers 503 until the database is reachable and
its migrations have run, which a watcher retries in the background; then the
outbox worker starts and service is normal, with no restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from types import FrameType
from typing import Any

from sqlalchemy import text

from mailbeacon.app import create_web_app
from mailbeacon.config import Settings
from mailbeacon.db import describe_url, is_unreachable
from mailbeacon.kit import metrics
from mailbeacon.kit.heap import freeze_startup_heap
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.migrate import upgrade
from mailbeacon.privacy.tasks import RetentionWorker
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.edge import Receive, Scope, Send, TrackingEdge
from mailbeacon.web.metrics import MetricsEndpoint

log = logging.getLogger(__name__)

# Seconds between attempts to reach the database at start-up, doubling up to the cap.
DATABASE_RETRY_SECONDS = 1.0
DATABASE_RETRY_CAP_SECONDS = 15.0


class MailbeaconApp:
    """Routes by path prefix; runs the hit journal (and its consumer, unless RUN_INGEST is
    off) for the process's lifetime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.ingest = runtime.make_ingest()
        self.edge = TrackingEdge(
            runtime.codec,
            self.ingest.record,
            runtime.networks,
            trusted_proxies=runtime.settings.proxy_hops,
        )
        self.web = create_web_app(runtime)
        self.metrics = MetricsEndpoint(runtime.settings.METRICS_TOKEN)
        metrics.set_sync_source(runtime.sync_health)
        # Acknowledged hits not yet stored: reported by an ingest that offers
        # ``lag() -> kit.metrics.IngestLag`` (whichever design the ingest has).
        metrics.set_lag_source(getattr(self.ingest, "lag", None))
        self.demo_smtp: DemoSmtpServer | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Deletes tracking data past each organisation's retention period, daily.
        self.retention: RetentionWorker | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith("/t/"):
            await self.edge(scope, receive, send)
        elif kind == "http" and scope["path"] == "/metrics":
            await self.metrics(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.web(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The web app gets its own lifespan through a private channel, so its
        # startup and shutdown hooks run inside ours.
        message = await receive()
        assert message["type"] == "lifespan.startup"
        web_lifespan = self.web.router.lifespan_context(self.web)
        try:
            # Before the consumer starts: it must not write into a schema not yet migrated.
            self.runtime.database_ready = False
            await self.ingest.start()
            self._end_live_streams_on_exit()
            await self._start_demo_mailbox()
            if await asyncio.to_thread(self._prepare_database):
                await self._database_ready()
            else:
                self._watcher = asyncio.create_task(
                    self._wait_for_database(), name="mailbeacon-database-watcher"
                )
            await web_lifespan.__aenter__()
        except Exception as exc:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        # Everything loaded so far (the app, its routes, models and templates) lives as
        # long as the process: keep it out of the cyclic collector's full passes, which
        # otherwise walk all of it while every request waits (tens of ms at a time).
        freeze_startup_heap()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await web_lifespan.__aexit__(None, None, None)
        finally:
            if self._watcher is not None:
                self._watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._watcher
            await self._stop_mail()
            await self.runtime.live.stop()
            await self.ingest.stop()
            logging.getLogger("uvicorn.error").info(
                "journal consumer at shutdown: %s", self.ingest.stats
            )
            self.runtime.database.dispose()
        await send({"type": "lifespan.shutdown.complete"})

    def _end_live_streams_on_exit(self) -> None:
        """End the live streams as soon as the server is told to stop.

        A graceful shutdown waits for open responses, and a live stream stays
        open for minutes; so the server's own SIGINT/SIGTERM handler (uvicorn's)
        is chained to close them first. The browsers reconnect to whichever
        process is up next.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        live = self.runtime.live
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(signum)
            if not callable(previous):
                continue

            def handler(sig: int, frame: FrameType | None, previous: Any = previous) -> None:
                live.close_streams()
                previous(sig, frame)

            signal.signal(signum, handler)

    def _prepare_database(self) -> bool:
        """Run the migrations (unless turned off) and check the database answers; False if it
        cannot be reached. Runs in a thread."""
        settings = self.runtime.settings
        url = settings.database_url()
        try:
            if settings.MIGRATE_ON_START:
                upgrade(url)
            with self.runtime.database.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            log.warning(
                "the database at %s is unavailable (%s); tracked links and pixels keep "
                "working, pages and the API answer 503 until it is back",
                describe_url(url),
                _first_line(exc),
            )
            return False
        return True

    async def _wait_for_database(self) -> None:
        """Retry until the database answers and is migrated, then start what needs it."""
        delay = DATABASE_RETRY_SECONDS
        while True:
            await asyncio.sleep(delay)
            try:
                ready = await asyncio.to_thread(self._prepare_database)
            except Exception:
                log.exception("preparing the database failed; retrying")
                ready = False
            if ready:
                log.warning("the database is back: normal service resumes")
                await self._database_ready()
                return
            delay = min(delay * 2, DATABASE_RETRY_CAP_SECONDS)

    async def _database_ready(self) -> None:
        self.runtime.database_ready = True
        await self.runtime.live.start()
        if self.runtime.settings.RUN_WORKER:
            outbox = self.runtime.make_outbox_worker()
            await outbox.start()
            # A planned send wakes it after commit (Runtime.wake_outbox), so the copies
            # leave at once rather than at the worker's next poll.
            self.runtime.outbox = outbox
        if self.runtime.settings.RUN_SYNC:
            # Mailbox sync (IMAP): replies, bounces, the Sent-folder copies; a delivered
            # message wakes it (Runtime.wake_sync).
            sync = self.runtime.make_sync_worker()
            await sync.start()
            self.runtime.sync = sync
        if self.runtime.settings.RUN_WORKER:
            # Webhook deliveries, after the commits that wrote them (Runtime.wake_webhooks).
            webhooks = self.runtime.make_webhook_worker()
            await webhooks.start()
            self.runtime.webhooks = webhooks
        self.retention = RetentionWorker(self.runtime.database)
        await self.retention.start()

    async def _start_demo_mailbox(self) -> None:
        """The demo mailbox's SMTP server (it answers 451 while the database is away)."""
        settings = self.runtime.settings
        if settings.DEMO_SMTP_PORT:
            self.demo_smtp = DemoSmtpServer(self.runtime.database, port=settings.DEMO_SMTP_PORT)
            try:
                await self.demo_smtp.start()
            except OSError:
                log.exception("the demo mailbox could not start; serving without it")
                self.demo_smtp = None

    async def _stop_mail(self) -> None:
        retention, self.retention = self.retention, None
        if retention is not None:
            await retention.stop()
        outbox, self.runtime.outbox = self.runtime.outbox, None
        if outbox is not None:
            await outbox.stop()
        webhooks, self.runtime.webhooks = self.runtime.webhooks, None
        if webhooks is not None:
            await webhooks.stop()
        sync, self.runtime.sync = self.runtime.sync, None
        if sync is not None:
            await sync.stop()
        if self.demo_smtp is not None:
            await self.demo_smtp.stop()
            self.demo_smtp = None


def _first_line(exc: BaseException) -> str:
    text_ = str(getattr(exc, "orig", None) or exc).strip()
    return text_.splitlines()[0] if text_ else type(exc).__name__


def create_app(settings: Settings | None = None) -> MailbeaconApp:
    return MailbeaconApp(Runtime.from_settings(settings or Settings()))


def app_factory() -> Any:
    """Entry point for `uvicorn --factory mailbeacon.asgi:app_factory`."""
    return create_app()
