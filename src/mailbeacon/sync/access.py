"""A mailbox's IMAP settings as the sync worker uses them, read from its connection."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.netpolicy import AddressPolicy
from mailbeacon.models import MailboxConnection, Security
from mailbeacon.sync.imap import ImapSettings


@dataclass(frozen=True, slots=True)
class MailboxAccess:
    mailbox_id: int
    user_id: int
    imap: ImapSettings
    # The Sent folder the user chose or the test found; empty: look for it each time.
    sent_folder: str
    replace_provider_copies: bool
    # Which account the sync state belongs to; another one starts the sync over.
    account_key: str
    settings_updated_at: datetime
    # Why the mailbox cannot be used at all (a password this data folder cannot open).
    problem: str = ""


def account_key(mailbox: MailboxConnection) -> str:
    return f"{mailbox.imap_host.lower()}:{mailbox.imap_port}:{imap_username(mailbox)}"


def imap_username(mailbox: MailboxConnection) -> str:
    """The IMAP user name, the SMTP one when left empty (they are usually the same)."""
    return mailbox.imap_username or mailbox.smtp_username or mailbox.sender_address


def load_access(
    session: Session,
    mailbox_id: int,
    credentials: CredentialBox,
    *,
    policy: AddressPolicy,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
) -> MailboxAccess | None:
    """The mailbox's IMAP settings with its password opened; None without IMAP."""
    mailbox = session.get(MailboxConnection, mailbox_id)
    if mailbox is None or mailbox.is_demo or not mailbox.imap_host:
        return None
    sealed = (
        mailbox.smtp_password_encrypted
        if mailbox.imap_same_password
        else mailbox.imap_password_encrypted
    )
    problem = ""
    try:
        password = credentials.open(sealed)
    except ValueError as exc:
        password, problem = "", f"The mailbox password cannot be used: {exc}."
    return MailboxAccess(
        mailbox_id=mailbox.id,
        user_id=mailbox.user_id,
        imap=ImapSettings(
            host=mailbox.imap_host,
            port=mailbox.imap_port,
            security=Security(mailbox.imap_security),
            username=imap_username(mailbox),
            password=password,
            timeout=timeout,
            ssl_context=ssl_context,
            policy=policy,
        ),
        sent_folder=mailbox.sent_folder,
        replace_provider_copies=mailbox.replace_provider_copies,
        account_key=account_key(mailbox),
        settings_updated_at=mailbox.updated_at,
        problem=problem,
    )
