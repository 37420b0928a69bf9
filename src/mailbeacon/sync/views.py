"""Pages: the Demo inbox's answers. A demo recipient may reply, send an automatic reply
or bounce the email; each is built as mail (``sync.demo``) and received exactly as mail
read over IMAP is (``receiving.Receiver``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response
from sqlalchemy.orm import Session

from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.errors import NotFound
from mailbeacon.models import DemoMessage
from mailbeacon.sync import repository
from mailbeacon.sync.demo import Delivered, demo_auto_reply, demo_bounce, demo_reply, read_delivered
from mailbeacon.sync.receiving import Arrival, Receiver
from mailbeacon.web.deps import CheckedViewer, DbSession, provided

router = APIRouter(include_in_schema=False)

REPLY_CHARS = 10_000


class DeliveryNotFound(NotFound):
    """No such delivery of one of the viewer's emails in the Demo inbox."""


def _delivered(session: Session, user_id: int, demo_id: int) -> Delivered:
    demo = session.get(DemoMessage, demo_id)
    if demo is None:
        raise DeliveryNotFound(demo_id)
    delivered = read_delivered(demo.raw, demo.recipient)
    if not repository.sent_by_header_ids(session, user_id, [delivered.message_id]):
        raise DeliveryNotFound(demo_id)  # someone else's email
    return delivered


def _receive(request: Request, session: Session, user_id: int, raw: bytes) -> None:
    receiver = provided(request, Receiver)
    receiver.receive(
        session, repository.owner(session, user_id), [Arrival(raw, utcnow())], source="demo"
    )


def _back(demo_id: int, notice: str) -> Response:
    return RedirectResponse(f"/demo-inbox/{demo_id}?notice={notice}", status_code=303)


@router.post("/demo-inbox/{demo_id}/reply")
def reply(
    request: Request,
    session: DbSession,
    viewer: CheckedViewer,
    demo_id: int,
    text: Annotated[str, Form()] = "",
) -> Response:
    """The recipient replies with ``text`` above the quoted email."""
    delivered = _delivered(session, viewer.user.id, demo_id)
    words = text.strip()[:REPLY_CHARS] or "Thank you, that looks good."
    _receive(request, session, viewer.user.id, demo_reply(delivered, words, utcnow()))
    return _back(demo_id, "replied")


@router.post("/demo-inbox/{demo_id}/auto-reply")
def auto_reply(
    request: Request, session: DbSession, viewer: CheckedViewer, demo_id: int
) -> Response:
    """The recipient's mailbox answers with an out-of-office notice."""
    delivered = _delivered(session, viewer.user.id, demo_id)
    _receive(request, session, viewer.user.id, demo_auto_reply(delivered, utcnow()))
    return _back(demo_id, "auto-replied")


@router.post("/demo-inbox/{demo_id}/bounce")
def bounce(request: Request, session: DbSession, viewer: CheckedViewer, demo_id: int) -> Response:
    """The recipient's server reports the address unknown (5.1.1)."""
    delivered = _delivered(session, viewer.user.id, demo_id)
    _receive(request, session, viewer.user.id, demo_bounce(delivered, utcnow()))
    return _back(demo_id, "bounced")
