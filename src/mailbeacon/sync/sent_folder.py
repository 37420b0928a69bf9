"""Putting the sender's one pixel-free copy into the Sent folder, exactly once.

The copy is appended with ``\\Seen`` and a marker header of ours. Before
appending, the folder is searched by Message-ID: a copy with our marker means
an earlier attempt got through (its outcome was lost in a crash), so nothing is
appended twice; copies without it are the tracked ones a provider saved by
itself when the email went out over SMTP (Gmail, Outlook.com do), and are
deleted when the mailbox says so, which is what stops the sender's own mail
client from firing their pixels. Every step is safe to repeat.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from mailbeacon.sync.imap import SEEN, FetchPart, FolderMissing, MailboxClient

# Marks the copy mailbeacon put there, so a repeated attempt recognises it.
MARKER = b"X-Mailbeacon-Copy: sent-folder\r\n"
_MARKER_LINE = re.compile(rb"^X-Mailbeacon-Copy:[ \t]*sent-folder", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class SentFolderResult:
    folder: str
    appended: bool  # False: our copy was there already
    replaced: int  # provider-saved copies deleted


def put_sent_copy(
    mailbox: MailboxClient,
    raw: bytes,
    message_id: str,
    *,
    folder: str = "",
    replace_provider_copies: bool = True,
    when: dt.datetime | None = None,
) -> SentFolderResult:
    """Make ``folder`` (or the Sent folder the server names) hold exactly one copy of ours."""
    target = folder or mailbox.find_sent_folder()
    if not target:
        raise FolderMissing(
            "No Sent folder was found on the server; choose one in Settings > Email sync."
        )
    ours, theirs = _copies_in(mailbox, target, message_id)
    appended = False
    if not ours:
        uid = mailbox.append(target, MARKER + raw, flags=(SEEN,), when=when)
        appended = True
        if uid is None:  # no UIDPLUS: find it again by its marker
            ours, theirs = _copies_in(mailbox, target, message_id)
        else:
            ours = [uid]
    doomed = ours[1:] + (theirs if replace_provider_copies else [])
    if doomed:
        mailbox.delete(target, doomed)
    return SentFolderResult(target, appended, len(theirs) if replace_provider_copies else 0)


def _copies_in(mailbox: MailboxClient, folder: str, message_id: str) -> tuple[list[int], list[int]]:
    """UIDs of the message in ``folder``: ours (marked), and the others."""
    found = mailbox.find_by_message_id(folder, message_id)
    if not found:
        return [], []
    ours: list[int] = []
    theirs: list[int] = []
    for batch in mailbox.fetch(folder, found, part=FetchPart.HEADERS):
        for item in batch:
            (ours if _MARKER_LINE.search(item.data) else theirs).append(item.uid)
    return sorted(ours), sorted(theirs)
