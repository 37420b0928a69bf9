"""JSON API of the accounts domain: who the token or session belongs to."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request
from pydantic import BaseModel
from sqlalchemy.orm import Session

from mailbeacon.accounts.schemas import MailboxIn, MailboxOut, SyncStatusOut
from mailbeacon.accounts.service import NoMailboxConnection, account_service
from mailbeacon.config import Settings
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.errors import Conflict
from mailbeacon.kit.netpolicy import mail_server_policy
from mailbeacon.models import MailboxConnection
from mailbeacon.web.deps import CheckedViewer, DbSession, SignedInViewer, provided
from mailbeacon.web.routing import ApiRoute

router = APIRouter(prefix="/api", route_class=ApiRoute)


class ComposeDefaultsOut(BaseModel):
    open_tracking_offered: bool
    link_tracking_offered: bool
    open_tracking: bool
    link_tracking: bool


class MeOut(BaseModel):
    id: int
    email: str
    name: str
    organisation_id: int
    compose_defaults: ComposeDefaultsOut


@router.get("/me")
def me(viewer: SignedInViewer) -> MeOut:
    """The signed-in user and where compose's tracking switches start."""
    user = viewer.user
    return MeOut(
        id=user.id,
        email=user.email,
        name=user.display_name,
        organisation_id=user.organisation_id,
        compose_defaults=ComposeDefaultsOut(
            open_tracking_offered=user.open_tracking_enabled,
            link_tracking_offered=user.link_tracking_enabled,
            open_tracking=user.compose_open_tracking,
            link_tracking=user.compose_link_tracking,
        ),
    )


def _mailbox_out(
    session: Session, mailbox: MailboxConnection, needs_password: list[str] | None = None
) -> MailboxOut:
    status = account_service.sync_status(session, mailbox)
    real = not mailbox.is_demo
    return MailboxOut(
        is_demo=mailbox.is_demo,
        sender_name=mailbox.sender_name,
        sender_address=mailbox.sender_address,
        smtp_host=mailbox.smtp_host,
        smtp_port=mailbox.smtp_port,
        smtp_security=mailbox.smtp_security,
        smtp_username=mailbox.smtp_username,
        has_smtp_password=real and bool(mailbox.smtp_password_encrypted),
        imap_host=mailbox.imap_host if real else "",
        imap_port=mailbox.imap_port,
        imap_security=mailbox.imap_security,
        imap_username=mailbox.imap_username,
        imap_same_password=mailbox.imap_same_password,
        has_imap_password=real and bool(mailbox.imap_password_encrypted),
        sent_folder=mailbox.sent_folder,
        replace_provider_copies=mailbox.replace_provider_copies,
        sync=None if status is None else SyncStatusOut(**asdict(status)),
        needs_password=needs_password or [],
    )


@router.get("/mailbox", response_model=MailboxOut, responses={409: {"description": "None yet"}})
def get_mailbox(session: DbSession, viewer: SignedInViewer) -> MailboxOut:
    """Your mailbox connection (passwords never shown) and where its sync stands."""
    mailbox = account_service.get_mailbox(session, viewer.user)
    if mailbox is None:
        raise NoMailboxConnection("No mailbox is connected yet: PUT /api/mailbox.")
    return _mailbox_out(session, mailbox)


@router.put(
    "/mailbox",
    response_model=MailboxOut,
    responses={409: {"description": "The demo mailbox is off"}, 422: {"description": "Invalid"}},
)
def put_mailbox(
    request: Request, session: DbSession, viewer: CheckedViewer, body: MailboxIn
) -> MailboxOut:
    """Connect your mailbox (SMTP to send, IMAP to sync), or ``{"use_demo": true}``.

    A stored password is never sent to a server it was not entered for: when a
    server changes without its password, it is dropped and ``needs_password``
    names the field to send.
    """
    if body.use_demo:
        port = provided(request, Settings).DEMO_SMTP_PORT
        if not port:
            raise Conflict("The demo mailbox is switched off on this server.")
        return _mailbox_out(
            session, account_service.use_demo_mailbox(session, viewer.user, port=port)
        )
    values = body.model_dump(exclude={"use_demo"})
    if values["imap_same_password"] is None:
        values["imap_same_password"] = not body.imap_password
    policy = mail_server_policy(provided(request, Settings))
    data = account_service.parse_mailbox_settings(
        {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in values.items()}, policy
    )
    saved = account_service.save_mailbox(
        session, viewer.user, data, provided(request, CredentialBox)
    )
    needs = (["smtp_password"] if saved.password_dropped else []) + (
        ["imap_password"] if saved.imap_password_dropped else []
    )
    return _mailbox_out(session, saved.mailbox, needs)
