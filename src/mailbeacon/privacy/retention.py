"""Retention: per-person tracking data is kept ``retention_days`` and no longer.

For each organisation, events older than its retention period are deleted, in
small transactions so that the hit pipeline never waits long behind them. A copy
whose latest event is older than the period has its own figures (its opens and
clicks, first and last times, clicks per link) reset, and the notifications
naming a person for a hit that old go too. The emails' figures stay: they were
anonymous counts all along, so the Mail tab's totals do not change.

Safe to run twice and from several processes at once: every step deletes or
resets only what is past the cutoff.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.privacy import repository

# Events deleted per transaction.
BATCH = 2000
# Uids of anonymously counted hits guard a journal replay against counting twice;
# no replay reaches back this far.
ANONYMOUS_UID_DAYS = 90


@dataclass(slots=True)
class RetentionReport:
    events: int = 0
    copies: int = 0
    notifications: int = 0
    organisations: int = 0


def run_retention(database: Database, now: datetime | None = None) -> RetentionReport:
    """Apply every organisation's retention period once."""
    now = now or utcnow()
    report = RetentionReport()
    with database.unit_of_work(immediate=False) as session:
        periods = [(org.id, org.retention_days) for org in repository.organisations(session)]
    for organisation_id, days in periods:
        cutoff = now - timedelta(days=days)
        report.organisations += 1
        while True:
            with database.unit_of_work() as session:
                ids = repository.old_event_ids(session, organisation_id, cutoff, BATCH)
                report.events += repository.delete_events(session, ids)
            if len(ids) < BATCH:
                break
        with database.unit_of_work() as session:
            quiet = repository.quiet_copy_ids(session, organisation_id, cutoff)
            repository.forget_tracking(session, quiet)
            report.copies += len(quiet)
            report.notifications += repository.delete_old_tracking_notifications(
                session, organisation_id, cutoff
            )
    with database.unit_of_work() as session:
        repository.prune_anonymous_hits(session, now - timedelta(days=ANONYMOUS_UID_DAYS))
    return report
