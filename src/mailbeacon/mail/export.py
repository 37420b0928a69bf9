"""CSV exports of sent email: the Mail tab (its current filter and search) and one email's
timeline, for spreadsheets and other tools.

Both read through ``mail.reading``, page after page, so an export holds exactly the
rows the pages show, scoped to the sending user as they are. Cells that a
spreadsheet would run as a formula (beginning with ``=``, ``+``, ``-``, ``@``, a tab
or a carriage return) get a leading apostrophe, as OWASP's "CSV Injection" page
advises: an email's subject, a recipient's name or a scanner's user agent must
never run in the sender's spreadsheet.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
from datetime import datetime

from sqlalchemy.orm import Session

from mailbeacon.mail import reading
from mailbeacon.mail.schemas import EventOut, MailFilter, MailRowOut

_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

MAIL_COLUMNS = [
    "id",
    "subject",
    "created_at",
    "sent_at",
    "to",
    "cc",
    "recipients",
    "delivery",
    "open_tracking",
    "link_tracking",
    "opens",
    "clicks",
    "machine_events",
    "first_open_at",
    "last_open_at",
    "first_click_at",
    "last_click_at",
    "replies",
    "last_reply_at",
]
TIMELINE_COLUMNS = [
    "occurred_at",
    "recipient",
    "kind",
    "link_position",
    "link_url",
    "link_text",
    "label",
    "counted",
    "judged",
    "reason",
    "copy_bounced",
]


def safe_cell(value: object) -> str:
    """A value as a CSV cell that no spreadsheet runs as a formula."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return value.isoformat()
    text = str(value)
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv(header: list[str], rows: Iterable[list[object]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in rows:
        writer.writerow([safe_cell(v) for v in row])
    return out.getvalue()


def all_mail_rows(
    session: Session, user_id: int, mail_filter: MailFilter | None, q: str
) -> Iterator[MailRowOut]:
    """Every email the Mail tab lists under this filter and search, newest first."""
    before: str | None = None
    while True:
        page = reading.mail_page(
            session,
            user_id,
            mail_filter=mail_filter,
            q=q,
            before=before,
            limit=reading.MAX_PAGE_SIZE,
        )
        yield from page.items
        if page.older_cursor is None:
            return
        before = page.older_cursor


def mail_csv(session: Session, user_id: int, mail_filter: MailFilter | None, q: str) -> str:
    """The Mail tab as CSV: one line per email, as the tab lists them."""

    def rows() -> Iterator[list[object]]:
        for r in all_mail_rows(session, user_id, mail_filter, q):
            statuses: dict[str, int] = {}
            for c in r.recipients:
                statuses[str(c.status)] = statuses.get(str(c.status), 0) + 1
            yield [
                r.id,
                r.subject,
                r.created_at,
                r.sent_at,
                r.to,
                r.cc,
                "; ".join(f"{c.address} ({c.kind})" for c in r.recipients),
                "; ".join(f"{status}: {n}" for status, n in sorted(statuses.items())),
                any(c.open_tracked for c in r.recipients),
                any(c.links_tracked for c in r.recipients),
                r.open_count,
                r.click_count,
                r.machine_event_count,
                r.first_open_at,
                r.last_open_at,
                r.first_click_at,
                r.last_click_at,
                r.reply_count,
                r.last_reply_at,
            ]

    return _csv(MAIL_COLUMNS, rows())


def all_events(session: Session, user_id: int, message_id: int) -> Iterator[EventOut]:
    """Every event of one of the user's emails, newest first (``MailNotFound`` if not theirs)."""
    before: str | None = None
    while True:
        page = reading.mail_events(session, user_id, message_id, before=before, limit=1000)
        yield from page.items
        if page.older_cursor is None:
            return
        before = page.older_cursor


def timeline_csv(session: Session, user_id: int, message_id: int) -> str:
    """One email's timeline as CSV: one line per event, newest first, machines included."""
    return _csv(
        TIMELINE_COLUMNS,
        (
            [
                e.occurred_at,
                e.recipient,
                e.kind,
                e.link_position,
                e.link_url,
                e.link_text,
                e.label,
                e.person,
                e.judged,
                e.reason,
                e.suspect,
            ]
            for e in all_events(session, user_id, message_id)
        ),
    )
