"""The webhook worker: posts each due delivery, retries with exponential backoff, disables
endpoints that are gone or failing for a day.

A delivery is claimed (``pending`` -> ``delivering``) and committed before its
request goes out, and its outcome written in a transaction of its own after the
answer. A worker that dies in between leaves the claim behind; once it is older
than any request could take (``lease``), another worker puts it back, and the
event is posted again under the same ``webhook-id``. Delivery is therefore at
least once: a receiver that must act once keeps the ids it has seen (the
Standard Webhooks specification asks receivers to, for that reason).

Up to ``WEBHOOK_CONCURRENCY`` requests are in flight at once. Database work runs
in a thread: inside ``serve`` the event loop also answers the tracking edge,
which must never wait on a commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import ssl
import time
from datetime import timedelta

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import as_utc, utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.metrics import WEBHOOK_DELIVERIES
from mailbeacon.kit.workers import backoff_seconds, wake_from_any_thread
from mailbeacon.models import DeliveryStatus
from mailbeacon.webhooks import repository
from mailbeacon.webhooks.delivery import (
    Attempt,
    plain_http_allowed,
    post_event,
    tls_context,
    webhook_policy,
)
from mailbeacon.webhooks.ports import OwnerNotices
from mailbeacon.webhooks.repository import ClaimedDelivery, Settlement

log = logging.getLogger(__name__)

MAINTAIN_EVERY_SECONDS = 60.0
PURGE_EVERY_SECONDS = 3600.0
STOP_GRACE_SECONDS = 10.0


def default_worker_id() -> str:
    return f"{socket.gethostname()[:60]}:{os.getpid()}:{secrets.token_hex(4)}"


class WebhookWorker:
    """Delivers every due webhook delivery; runs inside ``serve``."""

    def __init__(
        self,
        database: Database,
        settings: Settings,
        credentials: CredentialBox,
        notices: OwnerNotices,
        *,
        worker_id: str | None = None,
        poll_seconds: float = 1.0,
        concurrency: int | None = None,
        verify: ssl.SSLContext | None = None,
    ) -> None:
        self.database = database
        self.notices = notices
        self.worker_id = (worker_id or default_worker_id())[:100]
        self.poll_seconds = poll_seconds
        self.concurrency = concurrency or settings.WEBHOOK_CONCURRENCY
        self.timeout = settings.WEBHOOK_TIMEOUT_SECONDS
        self.backoff_seconds = settings.WEBHOOK_BACKOFF_SECONDS
        self.backoff_cap = settings.WEBHOOK_BACKOFF_CAP_SECONDS
        self.retry_for = timedelta(hours=settings.WEBHOOK_RETRY_HOURS)
        self.disable_after = timedelta(hours=settings.WEBHOOK_DISABLE_HOURS)
        self.keep_log = timedelta(days=settings.WEBHOOK_LOG_DAYS)
        # Far beyond any request (each is cut at the timeout): a claim older than this
        # belongs to a worker that stopped.
        self.lease = timedelta(seconds=3 * self.timeout + 30)
        self.policy = webhook_policy(settings)
        self.allow_plain_http = plain_http_allowed(settings)
        self.verify = verify or tls_context()
        self._credentials = credentials
        self._stopping = False
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._drain_lock = asyncio.Lock()
        self.stats = {"delivered": 0, "retried": 0, "failed": 0}

    # -- lifecycle

    async def start(self) -> None:
        """Start polling (and answering wakes)."""
        if self._task is not None:
            return
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.create_task(self._poll_loop(), name="mailbeacon-webhook-worker")

    async def stop(self) -> None:
        """Claim nothing more, let requests in flight finish (briefly), and stop."""
        self._stopping = True
        self._wake.set()
        task, self._task = self._task, None
        if task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(task), STOP_GRACE_SECONDS)
            except TimeoutError:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def wake(self) -> None:
        """Look for due deliveries now instead of at the next poll; safe from any thread."""
        wake_from_any_thread(self._loop, self._wake)

    async def run_once(self) -> int:
        """Deliver every delivery due now (retries falling due meanwhile too); return how
        many attempts were made."""
        await asyncio.to_thread(self._maintain, purge=False)
        return await self._drain()

    # -- the loop

    async def _poll_loop(self) -> None:
        next_maintenance = 0.0
        next_purge = time.monotonic() + MAINTAIN_EVERY_SECONDS
        while not self._stopping:
            self._wake.clear()
            try:
                now = time.monotonic()
                if now >= next_maintenance:
                    purge = now >= next_purge
                    await asyncio.to_thread(self._maintain, purge=purge)
                    next_maintenance = now + MAINTAIN_EVERY_SECONDS
                    if purge:
                        next_purge = now + PURGE_EVERY_SECONDS
                await self._drain()
            except Exception:
                log.exception("webhook worker pass failed; trying again shortly")
            if self._stopping:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)

    async def _drain(self) -> int:
        async with self._drain_lock:
            handled = 0
            in_flight: set[asyncio.Task[Settlement]] = set()
            try:
                while True:
                    free = 0 if self._stopping else self.concurrency - len(in_flight)
                    if free > 0:
                        for claimed in await asyncio.to_thread(self._claim, free):
                            in_flight.add(asyncio.create_task(self._deliver(claimed)))
                    if not in_flight:
                        return handled
                    done, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    settled = [task.result() for task in done]
                    await asyncio.to_thread(self._settle, settled)
                    for settlement in settled:
                        WEBHOOK_DELIVERIES.labels(_OUTCOMES[settlement.status]).inc()
                    handled += len(done)
            except BaseException:
                # Claims left behind are put back once their lease runs out.
                for task in in_flight:
                    task.cancel()
                await asyncio.gather(*in_flight, return_exceptions=True)
                raise

    async def _deliver(self, claimed: ClaimedDelivery) -> Settlement:
        try:
            secret = self._credentials.open(claimed.secret_sealed)
        except ValueError:
            attempt = Attempt(
                None, "The signing secret cannot be decrypted with this data folder's key."
            )
        else:
            try:
                attempt = await post_event(
                    claimed.url,
                    webhook_id=claimed.webhook_id,
                    body=claimed.payload,
                    secret=secret,
                    policy=self.policy,
                    allow_plain_http=self.allow_plain_http,
                    seconds=self.timeout,
                    verify=self.verify,
                )
            except Exception as exc:  # a bug must not leave the claim to its lease
                log.exception("posting webhook delivery %d failed unexpectedly", claimed.id)
                attempt = Attempt(None, f"internal error: {type(exc).__name__}")
        return self.settlement(claimed, attempt)

    def settlement(self, claimed: ClaimedDelivery, attempt: Attempt) -> Settlement:
        """What an attempt makes of its delivery: delivered, retried later, or given up."""
        base = (claimed.id, claimed.endpoint_id)
        if attempt.delivered:
            self.stats["delivered"] += 1
            return Settlement(*base, DeliveryStatus.DELIVERED, attempt.status, "")
        if attempt.status == 410:
            # Standard Webhooks: 410 Gone asks the sender to stop; the endpoint is disabled.
            self.stats["failed"] += 1
            return Settlement(
                *base, DeliveryStatus.FAILED, attempt.status, attempt.error, gone=True
            )
        next_at = utcnow() + timedelta(seconds=self.backoff(claimed.attempts))
        if next_at > as_utc(claimed.event_created_at) + self.retry_for:
            self.stats["failed"] += 1
            error = f"Gave up after {claimed.attempts} attempts. Last: {attempt.error}"
            return Settlement(*base, DeliveryStatus.FAILED, attempt.status, error)
        self.stats["retried"] += 1
        return Settlement(*base, DeliveryStatus.PENDING, attempt.status, attempt.error, next_at)

    def backoff(self, attempts: int) -> float:
        """Seconds before the next try: doubling from the base, capped, with 10% jitter."""
        return backoff_seconds(self.backoff_seconds, attempts, self.backoff_cap)

    # -- database work (runs in a thread)

    def _claim(self, limit: int) -> list[ClaimedDelivery]:
        now = utcnow()
        # A read first: on SQLite an idle poll then never takes the write lock.
        with self.database.unit_of_work(immediate=False) as session:
            if not repository.has_due(session.connection(), now):
                return []
        with self.database.unit_of_work() as session:
            return repository.claim(session.connection(), self.worker_id, now, limit)

    def _settle(self, settlements: list[Settlement]) -> None:
        """One transaction: the outcomes, and the endpoints they disable (with a notice)."""
        now = utcnow()
        with self.database.unit_of_work() as session:
            conn = session.connection()
            repository.settle(conn, self.worker_id, now, settlements)
            touched = sorted({s.endpoint_id for s in settlements})
            gone = {s.endpoint_id for s in settlements if s.gone}
            for row in repository.endpoints_to_disable(
                conn, touched, now - self.disable_after, sorted(gone)
            ):
                reason = (
                    "it answered 410 Gone"
                    if row.id in gone
                    else "its deliveries have failed for a day"
                )
                repository.disable_endpoint(conn, row.id, now, f"Disabled: {reason}.")
                self.notices.endpoint_disabled(
                    session, row.user_id, f"Webhook to {row.url} was disabled: {reason}."
                )
                log.warning("webhook endpoint %d disabled: %s", row.id, reason)
            # A retry written for an endpoint disabled meanwhile would wait forever.
            repository.fail_waiting(
                conn,
                repository.disabled_among(conn, touched),
                "Not sent: the endpoint was disabled.",
            )

    def _maintain(self, *, purge: bool) -> None:
        now = utcnow()
        with self.database.unit_of_work() as session:
            conn = session.connection()
            released = repository.release_stale_claims(conn, now - self.lease, now)
            if released:
                log.warning("%d webhook deliveries were left mid-request: posting again", released)
            if purge:
                repository.purge_log(conn, now - self.keep_log)


_OUTCOMES = {
    DeliveryStatus.DELIVERED: "delivered",
    DeliveryStatus.PENDING: "retry",
    DeliveryStatus.FAILED: "failed",
}
