"""Durable ingest: an in-process queue drained by one writer with group commit.

The edge awaits :meth:`Ingest.record`, which returns only once the hit is
durable: committed to the database, or appended with fsync to the local spool
when the database cannot be reached. Hits that arrive while a batch is being
written wait in the queue and go together in the next transaction, so under
load one commit (one fsync) carries many hits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from mailbeacon.db import is_unreachable
from mailbeacon.tracking.events import BatchResult
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.spool import Spool

log = logging.getLogger(__name__)

WriteBatch = Callable[[list[Hit], bool], BatchResult]


class Ingest:
    def __init__(
        self,
        write_batch: WriteBatch,
        spool: Spool,
        *,
        batch_max: int = 1024,
        retry_seconds: float = 1.0,
        writers: int = 1,
        database_ready: Callable[[], bool] = lambda: True,
    ) -> None:
        self._write_batch = write_batch
        # Until the database is reachable *and migrated*, hits go to the spool
        # without trying it: an old schema would refuse them as if they were bad.
        self._database_ready = database_ready
        self._spool = spool
        self._batch_max = batch_max
        self._retry_seconds = retry_seconds
        self._queue: asyncio.Queue[tuple[Hit, asyncio.Future[None]] | None] = asyncio.Queue()
        self._writers_wanted = writers
        self._writers: list[asyncio.Task[None]] = []
        self._replayer: asyncio.Task[None] | None = None
        self._db_retry_at = 0.0
        self.database_up = True
        self.stats = {"written": 0, "spooled": 0, "replayed": 0, "lost": 0, "batches": 0}

    async def start(self) -> None:
        if self._writers:
            return
        # Several writers only help where commits can overlap (PostgreSQL groups
        # concurrent WAL flushes); SQLite has one writer lock, so it gets one.
        self._writers = [
            asyncio.create_task(self._write_loop(), name=f"mailbeacon-ingest-writer-{i}")
            for i in range(self._writers_wanted)
        ]
        self._replayer = asyncio.create_task(self._replay_loop(), name="mailbeacon-spool-replay")

    async def stop(self) -> None:
        """Flush every queued hit, replay what the spool holds if possible, and stop."""
        if not self._writers:
            return
        for _ in self._writers:
            await self._queue.put(None)
        await asyncio.gather(*self._writers)
        self._writers = []
        if self._replayer is not None:
            self._replayer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._replayer
            self._replayer = None
        try:
            await self.replay_spool()
        except Exception:
            log.exception("spool replay at shutdown failed; the next start replays it")

    async def record(self, hit: Hit) -> None:
        """Queue a hit and return once it is durable."""
        if not self._writers:
            raise RuntimeError("ingest is not running")
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((hit, fut))
        await fut

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            batch: list[tuple[Hit, asyncio.Future[None]]] = []
            if item is None:
                stopping = True
            else:
                batch.append(item)
            while not stopping and len(batch) < self._batch_max and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            if batch:
                await self._store([h for h, _ in batch])
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(None)

    async def _store(self, hits: list[Hit]) -> None:
        self.stats["batches"] += 1
        if self._database_ready() and time.monotonic() >= self._db_retry_at:
            try:
                await asyncio.to_thread(self._write_isolating, hits, False)
            except Exception:
                log.exception("database unreachable; spooling %d hits", len(hits))
                self._mark_down()
            else:
                self.stats["written"] += len(hits)
                self.database_up = True
                return
        try:
            await asyncio.to_thread(self._spool.append, hits)
            self.stats["spooled"] += len(hits)
        except Exception:
            # Both the database and the local disk failed. The edge still answers
            # (a pixel and a link must never break), so say loudly what is lost.
            self.stats["lost"] += len(hits)
            log.critical("could not store %d hits in the database nor the spool", len(hits))

    def _write_isolating(self, hits: list[Hit], replay: bool) -> BatchResult:
        """Write a batch; if the database refuses it for a reason other than being
        away, write the hits one by one and set aside only those it still refuses.

        Raises only when the database cannot be reached, so that one bad hit can
        neither hold back the others nor make the database look down.
        """
        try:
            return self._write_batch(hits, replay)
        except Exception as exc:
            if is_unreachable(exc):
                raise
            log.exception("a batch of %d hits was refused; writing them one by one", len(hits))
        total = BatchResult()
        refused: list[Hit] = []
        for hit in hits:
            try:
                result = self._write_batch([hit], replay)
            except Exception as exc:
                if is_unreachable(exc):
                    raise
                refused.append(hit)
                continue
            total.add(result)
        if refused:
            self._spool.reject(refused, "refused by the database")
        return total

    def _mark_down(self) -> None:
        self.database_up = False
        self._db_retry_at = time.monotonic() + self._retry_seconds

    async def _replay_loop(self) -> None:
        while True:
            await asyncio.sleep(self._retry_seconds)
            if not self._database_ready() or time.monotonic() < self._db_retry_at:
                continue
            try:
                await self.replay_spool()
            except Exception:
                log.exception("spool replay failed; will retry")

    async def replay_spool(self) -> int:
        """Move every claimable spool file into the database; returns hits replayed."""
        return await asyncio.to_thread(self._replay_all)

    def _replay_all(self) -> int:
        total = 0
        while self._spool.has_pending():
            try:
                with self._spool.claim() as claimed:
                    if claimed is None:
                        break
                    path, hits = claimed
                    if hits:
                        result = self._write_isolating(hits, True)
                        total += result.written
                        log.info(
                            "replayed %d hits from %s (%d already stored)",
                            result.written,
                            path.name,
                            result.skipped_duplicates,
                        )
            except Exception:
                self._mark_down()
                raise
        self.stats["replayed"] += total
        if total:
            self.database_up = True
        return total
