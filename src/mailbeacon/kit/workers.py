"""What the background workers (outbox, mailbox sync, webhooks) share: when to try
again, and how to wake one from any thread."""

from __future__ import annotations

import asyncio
import contextlib
import random

# Back-off jitter from a generator of our own: the process-wide one is left alone
# (other code, and test generators, may depend on its sequence).
_JITTER = random.Random()


def backoff_seconds(base: float, attempts: int, cap: float) -> float:
    """Seconds before the next try: doubling from ``base`` with each failed attempt,
    capped, with 10% jitter so that what failed together is not retried together."""
    if base <= 0:
        return 0.0
    delay = min(base * 2.0 ** max(attempts - 1, 0), cap)
    return float(delay * _JITTER.uniform(0.9, 1.1))


def wake_from_any_thread(loop: asyncio.AbstractEventLoop | None, wake: asyncio.Event) -> None:
    """Set a worker's ``wake`` event, whichever thread calls: an ``asyncio.Event`` may
    only be touched from its loop's own thread (request handlers run in a pool)."""
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if loop is None or running is loop:
        wake.set()
        return
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing to wake
        loop.call_soon_threadsafe(wake.set)
