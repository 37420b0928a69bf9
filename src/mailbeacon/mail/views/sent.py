"""Pages: the Mail tab (sent emails with their delivery and tracking) and one email's
detail, with "Send again" for a copy whose delivery is unknown.

Neither page ever loads a pixel or follows a tracked link: the list shows
figures and events only, and the detail shows the body as written, sanitised,
with this installation's pixels removed and tracked links restored, inside a
sandboxed frame under a policy that lets no remote image load unless the user
asks for images (DESIGN: "No false self-opens").
"""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mailbeacon.kit import frames
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.cursors import InvalidCursor
from mailbeacon.kit.display import unicode_address
from mailbeacon.kit.local_time import zone_named
from mailbeacon.mail import attachments, charts, reading
from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.mail.ports import TrackedLinks
from mailbeacon.mail.schemas import MailFilter
from mailbeacon.mail.service import CannotRetry, message_service
from mailbeacon.models import CopyStatus
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided, render

router = APIRouter(include_in_schema=False)

FILTER_LABELS = {
    "": "All sent",
    MailFilter.TRACKED: "Mail tracking enabled",
    MailFilter.OPENED: "Opened",
    MailFilter.CLICKED: "Clicked",
    MailFilter.NOT_OPENED: "Not opened",
}

_DETAIL_CSP = (
    "default-src 'none'; img-src {images}; style-src 'self' 'unsafe-inline'; "
    "script-src 'self'; connect-src 'self'; frame-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
# The frame has no allow-scripts and no allow-same-origin: nothing in the email
# runs, and its requests carry none of this site's cookies. Links open in a new
# tab, to their real destinations.
BODY_FRAME_SANDBOX = "allow-popups allow-popups-to-escape-sandbox"
# Notices are chosen by key, never echoed from the query string.
NOTICES = {
    "queued": "Your email is on its way: it is being sent in the background.",
    "resent": "The copy is queued again: it is being sent in the background.",
    "not-resent": "That copy was not sent again: its delivery is no longer unknown.",
}
_PENDING = frozenset({CopyStatus.QUEUED, CopyStatus.SENDING})


def parse_filter(value: str) -> MailFilter | None:
    try:
        return MailFilter(value) if value else None
    except ValueError:
        return None


def parse_ids(values: list[str]) -> list[int]:
    ids: list[int] = []
    for value in values:
        for part in value.split(","):
            if part.strip().isdigit():
                ids.append(int(part))
    return ids


@router.get("/mail", response_class=HTMLResponse)
def mail_tab(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    filter: str = "",
    q: str = "",
    before: str = "",
    after: str = "",
) -> Response:
    """The Mail tab: sent emails, newest first, with their open and link icons."""
    chosen = parse_filter(filter)
    try:
        page = reading.mail_page(
            session, viewer.user.id, mail_filter=chosen, q=q, before=before, after=after
        )
    except InvalidCursor:
        page = reading.mail_page(session, viewer.user.id, mail_filter=chosen, q=q)
    # The last 30 days whatever the filter or search: the figures the list sits in.
    rates = (
        None
        if before or after
        else charts.recent_rates(session, viewer.user.id, utcnow(), zone_named(viewer.time_zone))
    )
    return render(
        request,
        "mail/tab.html",
        {
            "active": "mail",
            "rates": rates,
            "page": page,
            "filter": chosen.value if chosen else "",
            "filters": FILTER_LABELS,
            "q": " ".join(q.split()),
        },
    )


@router.get("/mail/rows", response_class=HTMLResponse)
def mail_rows(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    ids: Annotated[list[str], Query()],
) -> Response:
    """Some rows of the Mail tab, as HTML, for the page's live updates."""
    rows = reading.mail_rows(session, viewer.user.id, parse_ids(ids))
    return render(request, "mail/_tab_rows.html", {"rows": rows})


@router.get("/mail/{message_id}", response_class=HTMLResponse)
def mail_detail(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    images: bool = False,
    before: str = "",
    notice: str = "",
) -> Response:
    """One sent email: delivery and tracking per recipient, clicks per link, the timeline
    and the body as written."""
    detail = reading.mail_detail(
        session,
        viewer.user.id,
        message_id,
        links=provided(request, TrackedLinks),
        remote_images=images,
    )
    older = None
    if before:
        try:
            older = reading.mail_events(session, viewer.user.id, message_id, before=before)
        except InvalidCursor:
            older = None
    replies = reading.mail_replies(
        session,
        viewer.user.id,
        message_id,
        links=provided(request, TrackedLinks),
        remote_images=images,
    )
    chart = charts.activity_chart(
        session,
        detail.id,
        detail.sent_at or detail.created_at,
        [
            charts.ChartRecipient(
                copy_id=r.copy_id,
                name=r.name or unicode_address(r.address),
                opens=r.open_count,
                clicks=r.click_count,
                machine=r.machine_event_count,
            )
            for r in detail.recipients
        ],
        zone_named(viewer.time_zone),
    )
    timeline = older.items if older is not None else detail.timeline
    older_cursor = older.older_cursor if older is not None else detail.timeline_older_cursor
    # Without images, nothing may load but this site's own static files (the
    # favicon): not even a pixel of ours that the sanitiser failed to spot.
    static = str(request.base_url).rstrip("/") + "/static/"
    csp = _DETAIL_CSP.format(images="https: http: data:" if images else f"data: {static}")
    return render(
        request,
        "mail/detail.html",
        {
            "active": "mail",
            "mail": detail,
            "document": reading.body_document(detail),
            "sandbox": BODY_FRAME_SANDBOX,
            "images": images,
            "timeline": timeline,
            "older_cursor": older_cursor,
            "paged": older is not None,
            "pending": any(r.status in _PENDING for r in detail.recipients),
            "replies": replies,
            # Each reply's HTML as its frame's document: sanitised, our pixels gone.
            "reply_documents": {
                r.id: frames.html_document(r.body_html) for r in replies if r.body_html is not None
            },
            "notice": NOTICES.get(notice, ""),
            "chart": chart,
        },
        headers={"content-security-policy": csp, "referrer-policy": "no-referrer"},
    )


@router.get("/mail/{message_id}/attachments/{attachment_id}")
def attachment_download(
    session: DbSession, viewer: SignedInViewer, message_id: int, attachment_id: int
) -> Response:
    """One file of the user's own email, as a download: never shown in the page."""
    file = attachments.file_of_sender(session, viewer.user.id, message_id, attachment_id)
    if file is None:
        raise HTTPException(status_code=404)
    return attachment_response(file)


def attachment_response(file: AttachmentFile) -> Response:
    """A file as a download: saved, never displayed, sniffed or run by the browser."""
    return Response(
        file.data,
        media_type=file.content_type,
        headers={
            # RFC 6266 with RFC 8187's filename* for names that are not ASCII.
            "content-disposition": "attachment; "
            + _ascii_filename(file.filename)
            + "; filename*=UTF-8''"
            + quote(file.filename, safe=""),
            "x-content-type-options": "nosniff",
            "content-security-policy": "default-src 'none'; sandbox",
        },
    )


def _ascii_filename(name: str) -> str:
    fallback = "".join(ch if ch.isascii() and ch.isprintable() and ch not in '"\\' else "_"
                       for ch in name)  # fmt: skip
    return f'filename="{fallback}"'


@router.post("/mail/{message_id}/copies/{copy_id}/retry")
def retry_copy(
    session: DbSession, viewer: CheckedViewer, message_id: int, copy_id: int
) -> Response:
    """Send an ``unknown`` copy again, on the sender's say; anyone else's is "not found"."""
    try:
        message_service.retry_unknown(session, viewer.user, copy_id, message_id=message_id)
    except CannotRetry:
        return RedirectResponse(f"/mail/{message_id}?notice=not-resent", status_code=303)
    return RedirectResponse(f"/mail/{message_id}?notice=resent", status_code=303)


# The Outbox pages of earlier versions: delivery now shows on the Mail tab itself.


@router.get("/sent")
def outbox_moved() -> Response:
    return RedirectResponse("/mail", status_code=301)


@router.get("/sent/{message_id}")
def outbox_message_moved(message_id: int) -> Response:
    return RedirectResponse(f"/mail/{message_id}", status_code=301)
