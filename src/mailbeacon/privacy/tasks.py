"""The daily retention job that runs inside ``serve`` (``mailbeacon retention run`` is the
same job once, for cron)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from mailbeacon.db import Database, is_unreachable
from mailbeacon.privacy.retention import run_retention

log = logging.getLogger(__name__)

DAY_SECONDS = 24 * 3600.0
# The first run waits a little: a server starting is busy enough.
FIRST_RUN_SECONDS = 60.0


class RetentionWorker:
    """Runs retention once shortly after start, then once a day; idempotent, so several
    processes doing it is harmless."""

    def __init__(
        self,
        database: Database,
        *,
        interval: float = DAY_SECONDS,
        first_run: float = FIRST_RUN_SECONDS,
    ) -> None:
        self.database = database
        self.interval = interval
        self.first_run = first_run
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mailbeacon-retention")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        await asyncio.sleep(self.first_run)
        while True:
            try:
                report = await asyncio.to_thread(run_retention, self.database)
                log.info(
                    "retention: %d events and %d copies' figures removed",
                    report.events,
                    report.copies,
                )
            except Exception as exc:
                # Tomorrow is another day; the database may be away for now.
                if is_unreachable(exc):
                    log.warning("retention skipped: the database is unavailable")
                else:
                    log.exception("retention failed")
            await asyncio.sleep(self.interval)
