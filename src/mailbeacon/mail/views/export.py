"""Downloads: the Mail tab as CSV (its current filter and search) and one email's timeline."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from mailbeacon.mail import export
from mailbeacon.mail.views.sent import parse_filter
from mailbeacon.web.deps import DbSession, SignedInViewer

router = APIRouter(include_in_schema=False)


def csv_download(text: str, filename: str) -> Response:
    return Response(
        text,
        media_type="text/csv; charset=utf-8",
        headers={"content-disposition": f'attachment; filename="{filename}"'},
    )


@router.get("/mail.csv")
def mail_csv(session: DbSession, viewer: SignedInViewer, filter: str = "", q: str = "") -> Response:
    """The Mail tab as CSV, under the filter and search the tab shows."""
    text = export.mail_csv(session, viewer.user.id, parse_filter(filter), q)
    return csv_download(text, "mail.csv")


@router.get("/mail/{message_id}/timeline.csv")
def timeline_csv(session: DbSession, viewer: SignedInViewer, message_id: int) -> Response:
    """One email's timeline as CSV: every event, machines included, with its label."""
    text = export.timeline_csv(session, viewer.user.id, message_id)
    return csv_download(text, f"mail-{message_id}-timeline.csv")
