"""Pages: the Mail tab (sent emails with their tracking) and one email's detail.

Neither page ever loads a pixel or follows a tracked link: the list shows
figures and events only, and the detail shows the body as written, sanitised,
with this installation's pixels removed and tracked links restored, inside a
sandboxed frame under a policy that lets no remote image load unless the user
asks for images (DESIGN: "No false self-opens").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, Response

from mailbeacon.tracking import activity
from mailbeacon.tracking.activity import InvalidCursor, MailNotFound
from mailbeacon.tracking.schemas import MailFilter
from mailbeacon.web.deps import DbSession, SignedInViewer, get_runtime, render

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
        page = activity.mail_page(
            session, viewer.user.id, mail_filter=chosen, q=q, before=before, after=after
        )
    except InvalidCursor:
        page = activity.mail_page(session, viewer.user.id, mail_filter=chosen, q=q)
    return render(
        request,
        "mail/tab.html",
        {
            "active": "mail",
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
    rows = activity.mail_rows(session, viewer.user.id, parse_ids(ids))
    return render(request, "mail/_tab_rows.html", {"rows": rows})


@router.get("/mail/{message_id}", response_class=HTMLResponse)
def mail_detail(
    request: Request,
    session: DbSession,
    viewer: SignedInViewer,
    message_id: int,
    images: bool = False,
    before: str = "",
) -> Response:
    """One sent email: recipients, clicks per link, the timeline and the body as written."""
    runtime = get_runtime(request)
    try:
        detail = activity.mail_detail(
            session,
            viewer.user.id,
            message_id,
            codec=runtime.codec,
            base_url=runtime.settings.BASE_URL,
            remote_images=images,
        )
        older = (
            activity.mail_events(session, viewer.user.id, message_id, before=before)
            if before
            else None
        )
    except (MailNotFound, InvalidCursor) as exc:
        raise HTTPException(status_code=404) from exc
    if detail.body_html is not None:
        document = detail.body_html
    else:
        document = activity.text_document(detail.body_text or "")
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
            "document": document,
            "sandbox": BODY_FRAME_SANDBOX,
            "images": images,
            "timeline": timeline,
            "older_cursor": older_cursor,
            "paged": older is not None,
        },
        headers={"content-security-policy": csp, "referrer-policy": "no-referrer"},
    )
