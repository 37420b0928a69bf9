"""Trying IMAP settings for Settings > Email sync: sign in, list the folders, find Sent."""

from __future__ import annotations

from dataclasses import dataclass

from mailbeacon.sync.imap import ImapSettings, MailboxError, open_mailbox


@dataclass(frozen=True, slots=True)
class MailboxProbe:
    ok: bool
    stage: str  # "connect" | "tls" | "auth" | "ok"
    message: str
    folders: tuple[str, ...]
    sent_folder: str  # "" when the server marks none and no usual name exists


def probe_mailbox(settings: ImapSettings) -> MailboxProbe:
    """Sign in as the sync worker would and read the folder list (blocking)."""
    where = f"{settings.host}:{settings.port}"
    try:
        with open_mailbox(settings) as mailbox:
            folders = tuple(f.name for f in mailbox.list_folders() if f.selectable)
            sent = mailbox.find_sent_folder() or ""
    except MailboxError as exc:
        return MailboxProbe(False, str(exc.stage), exc.message, (), "")
    count = f"{len(folders)} folder{'s' if len(folders) != 1 else ''}"
    return MailboxProbe(
        True, "ok", f"Signed in to {where} as {settings.username} ({count}).", folders, sent
    )
