"""The live broker: wakes the browsers of users whose tracking data just changed.

A *wake* maps a user id to the ids of that user's messages with new activity.
It carries ids only, never tracking data: a woken stream reloads what it shows
through the same user-scoped queries as any page, so a wake that arrives twice,
early or for the wrong reason costs a query and can never leak anything.

Two transports, one interface:

* PostgreSQL: the writer calls ``pg_notify`` inside the transaction that stores
  the events (PostgreSQL delivers it on commit, to every process), and each
  process keeps one connection that ``LISTEN``s and fans the wakes out to its
  own subscribers. ``publish`` is then a no-op, or local subscribers would hear
  every wake twice.
* SQLite (one process): the writer runs in this process and calls ``publish``
  after its commit; the wake goes straight to the subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "mailbeacon"
# PostgreSQL refuses NOTIFY payloads of 8000 bytes or more.
MAX_PAYLOAD_BYTES = 7000
# Past this many messages in one wake, the user's pages simply reload what they show.
MAX_IDS_PER_USER = 200

# user id -> ids of messages with new activity; an empty collection says that
# only the user's notifications changed, None that everything may have.
Wake = Mapping[int, Collection[int] | None]


@dataclass(frozen=True, slots=True)
class LiveUpdate:
    """Raised after commit: these users' open pages should look again (``LiveBroker.publish``)."""

    wake: Wake


def encode_wake(wake: Wake) -> list[str]:
    """The wake as NOTIFY payloads, each under PostgreSQL's size limit."""
    payloads: list[str] = []
    chunk: dict[str, list[int] | None] = {}
    size = 0
    for user_id, message_ids in wake.items():
        ids = (
            None
            if message_ids is None or len(message_ids) > MAX_IDS_PER_USER
            else sorted(message_ids)
        )
        entry_size = 16 + (0 if ids is None else 12 * len(ids))
        if chunk and size + entry_size > MAX_PAYLOAD_BYTES:
            payloads.append(json.dumps({"u": chunk}, separators=(",", ":")))
            chunk, size = {}, 0
        chunk[str(user_id)] = ids
        size += entry_size
    if chunk:
        payloads.append(json.dumps({"u": chunk}, separators=(",", ":")))
    return payloads


def decode_wake(payload: str) -> dict[int, set[int] | None]:
    """A NOTIFY payload back as a wake; anything unreadable wakes nobody."""
    try:
        data = json.loads(payload)
        users = data["u"]
        return {
            int(user_id): None if ids is None else {int(i) for i in ids}
            for user_id, ids in users.items()
        }
    except (ValueError, KeyError, TypeError, AttributeError):
        log.warning("ignoring an unreadable live payload")
        return {}


@dataclass(frozen=True, slots=True)
class Activity:
    """What a subscriber missed since it last looked."""

    message_ids: frozenset[int]
    everything: bool  # reload whatever is shown (a lost connection, a huge batch)
    closed: bool  # the broker is stopping: end the stream


class Subscription:
    """One open stream of one user; wakes coalesce until the stream reads them."""

    def __init__(self, user_id: int) -> None:
        self.user_id = user_id
        self.closed = False
        self._pending: set[int] = set()
        self._everything = False
        self._event = asyncio.Event()

    def _wake(self, message_ids: Collection[int] | None) -> None:
        if message_ids is None:
            self._everything = True
        else:
            self._pending.update(message_ids)
        self._event.set()

    def _close(self) -> None:
        self.closed = True
        self._event.set()

    async def next(self, wait_seconds: float) -> Activity | None:
        """The activity gathered so far, waiting up to ``wait_seconds``; None if none came."""
        if not self._event.is_set():
            try:
                await asyncio.wait_for(self._event.wait(), wait_seconds)
            except TimeoutError:
                return None
        self._event.clear()
        activity = Activity(frozenset(self._pending), self._everything, self.closed)
        self._pending = set()
        self._everything = False
        return activity


class LiveBroker:
    """Fans wakes out to the subscriptions of this process."""

    def __init__(self, database_url: str = "") -> None:
        url = make_url(database_url) if database_url else None
        self.uses_notify = url is not None and url.get_backend_name() == "postgresql"
        self._conninfo = (
            url.set(drivername="postgresql").render_as_string(hide_password=False)
            if url is not None and self.uses_notify
            else ""
        )
        self._subscriptions: dict[int, set[Subscription]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self.stats = {"received": 0, "delivered": 0, "reconnects": 0}

    # -- lifecycle -----------------------------------------------------------

    async def start(self, wait_seconds: float = 5.0) -> None:
        """Bind to the running loop; on PostgreSQL, start listening (waiting a little for it)."""
        self._loop = asyncio.get_running_loop()
        if not self.uses_notify or self._listener is not None:
            return
        self._listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(), name="mailbeacon-live-listener")
        try:
            await asyncio.wait_for(self._listening.wait(), wait_seconds)
        except TimeoutError:
            log.warning("live notifications: not listening yet; retrying in the background")

    async def stop(self) -> None:
        """Stop listening and end every open stream."""
        self.close_streams()
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    def close_streams(self) -> None:
        """End every open stream (the server is shutting down); safe from any thread."""
        self._call(self._close_all)

    @property
    def listening(self) -> bool:
        return self._listening.is_set()

    # -- subscribers ---------------------------------------------------------

    def subscribe(self, user_id: int) -> Subscription:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        subscription = Subscription(user_id)
        self._subscriptions.setdefault(user_id, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subs = self._subscriptions.get(subscription.user_id)
        if subs is not None:
            subs.discard(subscription)
            if not subs:
                del self._subscriptions[subscription.user_id]

    @property
    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscriptions.values())

    # -- publishing ----------------------------------------------------------

    def publish(self, wake: Wake) -> None:
        """Tell this process's subscribers, after the change committed; safe from any thread.

        On PostgreSQL the wake already travels by NOTIFY, so this does nothing.
        """
        if wake and not self.uses_notify:
            self._call(self._deliver, dict(wake))

    def _call(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, wake: Wake) -> None:
        for user_id, message_ids in wake.items():
            for subscription in self._subscriptions.get(user_id, ()):
                subscription._wake(message_ids)
                self.stats["delivered"] += 1

    def _deliver_everyone(self) -> None:
        self._deliver({user_id: None for user_id in self._subscriptions})

    def _close_all(self) -> None:
        for subs in self._subscriptions.values():
            for subscription in subs:
                subscription._close()

    async def _listen(self) -> None:
        import psycopg

        delay = 0.5
        first = True
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._conninfo,
                    autocommit=True,
                    connect_timeout=5,
                    keepalives=1,
                    keepalives_idle=30,
                    keepalives_interval=10,
                    keepalives_count=3,
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    if not first:
                        # Wakes sent while we were away are lost: every stream reloads.
                        self.stats["reconnects"] += 1
                        self._deliver_everyone()
                    first = False
                    delay = 0.5
                    async for note in conn.notifies():
                        self.stats["received"] += 1
                        self._deliver(decode_wake(note.payload))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("live notifications: listener connection failed (%s)", exc)
            self._listening.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)
