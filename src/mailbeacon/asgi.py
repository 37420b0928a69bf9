"""Outermost entry point: /t/* goes to the tracking edge, the rest to the web app."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from mailbeacon.config import Settings
from mailbeacon.mail.demo import DemoSmtpServer
from mailbeacon.mail.tasks import OutboxWorker
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.edge import Receive, Scope, Send, TrackingEdge
from mailbeacon.web.app import create_web_app

log = logging.getLogger(__name__)


class MailbeaconApp:
    """Routes by path prefix and runs the ingest writer for the process's lifetime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.ingest = runtime.make_ingest()
        self.edge = TrackingEdge(
            runtime.codec,
            self.ingest.record,
            runtime.networks,
            trust_forwarded_for=runtime.settings.TRUST_FORWARDED_FOR,
        )
        self.web = create_web_app(runtime)
        self.outbox: OutboxWorker | None = None
        self.demo_smtp: DemoSmtpServer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http" and scope["path"].startswith("/t/"):
            await self.edge(scope, receive, send)
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
            await self.ingest.start()
            await self.runtime.live.start()
            self._end_live_streams_on_exit()
            await self._start_mail()
            await web_lifespan.__aenter__()
        except Exception as exc:
            log.exception("startup failed")
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        assert message["type"] == "lifespan.shutdown"
        try:
            await web_lifespan.__aexit__(None, None, None)
        finally:
            await self._stop_mail()
            await self.runtime.live.stop()
            await self.ingest.stop()
            logging.getLogger("uvicorn.error").info("ingest at shutdown: %s", self.ingest.stats)
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

    async def _start_mail(self) -> None:
        """The demo mailbox first (the worker may send to it), then the outbox worker."""
        settings = self.runtime.settings
        if settings.DEMO_SMTP_PORT:
            self.demo_smtp = DemoSmtpServer(self.runtime, port=settings.DEMO_SMTP_PORT)
            try:
                await self.demo_smtp.start()
            except OSError:
                log.exception("the demo mailbox could not start; serving without it")
                self.demo_smtp = None
        if settings.RUN_WORKER:
            self.outbox = OutboxWorker(self.runtime)
            await self.outbox.start()
        # Views call `request.app.state.outbox.wake()` after committing a send, so
        # it leaves at once rather than at the worker's next poll.
        self.web.state.outbox = self.outbox

    async def _stop_mail(self) -> None:
        if self.outbox is not None:
            await self.outbox.stop()
            self.outbox = None
        if self.demo_smtp is not None:
            await self.demo_smtp.stop()
            self.demo_smtp = None


def create_app(settings: Settings | None = None) -> MailbeaconApp:
    return MailbeaconApp(Runtime.from_settings(settings or Settings()))


def app_factory() -> Any:
    """Entry point for `uvicorn --factory mailbeacon.asgi:app_factory`."""
    return create_app()
