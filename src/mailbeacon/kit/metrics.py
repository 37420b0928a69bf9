"""Prometheus metrics: the counters the product keeps, and their text exposition.

Counters and histograms live in this module so that any layer may count without
knowing how the figures leave the process. Gauges whose value lives elsewhere
(the ingest's lag, the state of mailbox sync in the database) are read at scrape
time from a source the composition root registers (:func:`set_lag_source`,
:func:`set_sync_source`); this module knows no domain.

Several processes (``serve --workers N``): prometheus_client's multiprocess mode
keeps each process's counters in files under ``PROMETHEUS_MULTIPROC_DIR`` and a
scrape of any process adds them up. The variable must be set before this module
is first imported (``serve`` sets it for its workers); without it, each process
reports only its own counts.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple, TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_LATEST
MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"

REGISTRY = CollectorRegistry(auto_describe=True)

HITS_ACKNOWLEDGED = Counter(
    "mailbeacon_hits_acknowledged",
    "Hits the tracking edge answered after recording them durably, by kind (open, click).",
    ["kind"],
    registry=REGISTRY,
)
HITS_STORED = Counter(
    "mailbeacon_hits_stored",
    "Events stored in the database by the hit pipeline, by label (human, apple_mpp, ...).",
    ["label"],
    registry=REGISTRY,
)
INGEST_BATCH_HITS = Histogram(
    "mailbeacon_ingest_batch_hits",
    "Hits per batch handed to the hit pipeline (one transaction each).",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
    registry=REGISTRY,
)
SENDS = Counter(
    "mailbeacon_sends",
    "Attempts to send a recipient's copy, by outcome as written: sent, failed, "
    "retry (a temporary failure, tried again later) or unknown (cut off mid-transaction).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_DELIVERIES = Counter(
    "mailbeacon_webhook_deliveries",
    "Webhook delivery attempts, by outcome as written: delivered, retry, failed.",
    ["outcome"],
    registry=REGISTRY,
)


class IngestLag(NamedTuple):
    """Hits acknowledged by the edge and not yet stored, and the age of the oldest."""

    records: int
    seconds: float


class SyncHealth(NamedTuple):
    """Mailboxes whose sync last succeeded or failed, and the latest success (Unix time)."""

    ok: int
    failing: int
    last_success: float | None


T = TypeVar("T")

_lag_source: Callable[[], IngestLag | None] | None = None
_sync_source: Callable[[], SyncHealth | None] | None = None


def set_lag_source(source: Callable[[], IngestLag | None] | None) -> None:
    """Register what reports the ingest's lag at scrape time (None removes it)."""
    global _lag_source
    _lag_source = source


def set_sync_source(source: Callable[[], SyncHealth | None] | None) -> None:
    """Register what reports the state of mailbox sync at scrape time (None removes it)."""
    global _sync_source
    _sync_source = source


def _read(source: Callable[[], T | None] | None, what: str) -> T | None:
    if source is None:
        return None
    try:
        return source()
    except Exception:
        # A scrape must still answer with the counters when a source cannot (the
        # database away); the gauge is simply absent from this scrape.
        log.warning("metrics: could not read %s", what, exc_info=True)
        return None


class _SourcedGauges(Collector):
    """Gauges read from the registered sources when scraped."""

    def collect(self) -> Iterable[Metric]:
        lag = _read(_lag_source, "the ingest lag")
        if lag is not None:
            yield GaugeMetricFamily(
                "mailbeacon_ingest_lag_records",
                "Hits acknowledged by the edge and not yet stored in the database.",
                value=lag.records,
            )
            yield GaugeMetricFamily(
                "mailbeacon_ingest_lag_seconds",
                "Age of the oldest hit acknowledged and not yet stored (0 when none waits).",
                value=lag.seconds,
            )
        sync = _read(_sync_source, "the state of mailbox sync")
        if sync is not None:
            mailboxes = GaugeMetricFamily(
                "mailbeacon_sync_mailboxes",
                "Mailboxes synced over IMAP, by the state of their last attempt (ok, failing).",
                labels=["state"],
            )
            mailboxes.add_metric(["ok"], sync.ok)
            mailboxes.add_metric(["failing"], sync.failing)
            yield mailboxes
            if sync.last_success is not None:
                yield GaugeMetricFamily(
                    "mailbeacon_sync_last_success_timestamp_seconds",
                    "When a mailbox sync last succeeded (Unix time), any mailbox.",
                    value=sync.last_success,
                )

    def describe(self) -> Iterable[Metric]:
        # Nothing up front: what is collected depends on the sources registered.
        return ()


_SOURCED = _SourcedGauges()
REGISTRY.register(_SOURCED)


def multiprocess_dir() -> str | None:
    """The folder the processes' counters are shared through, if multiprocess mode is on."""
    return os.environ.get(MULTIPROCESS_ENV) or os.environ.get(MULTIPROCESS_ENV.lower()) or None


def render() -> bytes:
    """The text exposition of every metric (all processes' counters in multiprocess mode)."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
    # The sourced gauges describe this node and its database, not one process: any
    # process may report them.
    registry.register(_SOURCED)
    return generate_latest(registry)


def share_between_processes(directory: Path) -> None:
    """Turn on multiprocess mode for the processes started from here on.

    Called by ``serve --workers N`` before its workers start: they import this
    module afresh and see the variable. The folder is emptied first, since the
    counts of an earlier run would be added in. An operator who set
    PROMETHEUS_MULTIPROC_DIR (to share it with ``mailbeacon worker``, say) keeps it,
    and empties it at start as prometheus_client documents.
    """
    if multiprocess_dir() is not None:
        return
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    os.environ[MULTIPROCESS_ENV] = str(directory.resolve())
