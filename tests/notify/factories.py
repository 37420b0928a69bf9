"""Plain factories for the read side of tracking and notifications: senders in one
organisation, sent emails with tracked copies, and hits written by the real writer."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import update

from mailbeacon.accounts.schemas import NewUser
from mailbeacon.accounts.service import account_service
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.mail.schemas import Draft
from mailbeacon.mail.service import message_service
from mailbeacon.models import CopyStatus, RecipientCopy, User
from mailbeacon.runtime import Runtime
from mailbeacon.tracking.hits import Hit
from mailbeacon.tracking.repository import WriteResult

PASSWORD = "a long enough password"
CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/131.0.0.0 Safari/537.36"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
SCANNER = "python-requests/2.32.3"
OFFER_HTML = (
    '<p>Hello,</p><p>see our <a href="https://example.com/offer">new offer</a> '
    'and <a href="https://example.com/pricing">pricing</a>.</p>'
)


def make_sender(
    database: Database, email: str = "sally@example.com", org: str = "Acme", name: str = "Sally"
) -> int:
    """A user (in the named organisation, made if new) who sends through the demo mailbox."""
    with database.unit_of_work() as s:
        user = account_service.create_user(
            s, NewUser(email=email, password=PASSWORD, name=name, organisation=org)
        )
        account_service.use_demo_mailbox(s, user, port=2525)
        return user.id


@dataclass(frozen=True, slots=True)
class Sent:
    message_id: int
    copies: dict[str, int]  # address -> copy id
    user_id: int


def send_mail(
    database: Database,
    runtime: Runtime,
    user_id: int,
    to: tuple[str, ...] = ("ann@example.org",),
    *,
    subject: str = "Our offer",
    html: str | None = OFFER_HTML,
    text: str | None = None,
    bcc: tuple[str, ...] = (),
    open_tracking: bool = True,
    link_tracking: bool = True,
) -> Sent:
    """Plan a send as compose does, and mark every copy delivered."""
    with database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        draft = Draft(
            to=list(to),
            bcc=list(bcc),
            subject=subject,
            body_html=html,
            body_text=text,
            open_tracking=open_tracking,
            link_tracking=link_tracking,
        )
        message = message_service.plan_send(
            s, user, draft, codec=runtime.codec, base_url=runtime.settings.BASE_URL
        )
        now = utcnow()
        message.sent_at = now
        s.execute(
            update(RecipientCopy)
            .where(RecipientCopy.message_id == message.id)
            .values(status=CopyStatus.SENT, sent_at=now)
        )
        s.flush()
        copies = {c.address: c.id for c in s.query(RecipientCopy).filter_by(message_id=message.id)}
        return Sent(message.id, copies, user_id)


_seq = [0]


def hit(
    copy_id: int,
    kind: str = "open",
    *,
    at: float | None = None,
    ua: str = CHROME,
    ip_prefix: str = "203.0.113.0/24",
    network: str | None = None,
    position: int | None = None,
    viewer: int | None = None,
    head: bool = False,
) -> Hit:
    _seq[0] += 1
    return Hit(
        uid=f"{time.time_ns():x}{_seq[0]:08x}",
        kind=kind,
        copy_id=copy_id,
        link_position=position,
        occurred_at=time.time() if at is None else at,
        user_agent=ua,
        ip_prefix=ip_prefix,
        network=network,
        is_head=head,
        prefetch_hint=None,
        viewer_user_id=viewer,
    )


def record(runtime: Runtime, *hits: Hit) -> WriteResult:
    """Write hits as the ingest writer does (classification, figures, notifications)."""
    return runtime.write_batch(list(hits), False)
