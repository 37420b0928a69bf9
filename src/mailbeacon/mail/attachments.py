"""Files sent with an email: what may be attached, and where they are kept.

An attachment belongs to its message: stored in ``message_attachments`` in the same
transaction that plans the send, put in every copy and in the Sent folder's, and
deleted with the message. Its name and type are the uploader's, made safe to write
in a MIME header and to hand back for download; its octets are never interpreted.
"""

from __future__ import annotations

import math
import mimetypes
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import Table, insert, select
from sqlalchemy.orm import Session

from mailbeacon.models import Message, MessageAttachment

MAX_ATTACHMENTS = 20
MAX_FILENAME_CHARS = 200
DEFAULT_CONTENT_TYPE = "application/octet-stream"
_attachments = cast(Table, MessageAttachment.__table__)
# RFC 2045 section 5.1: type "/" subtype, each a token.
_TCHAR = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_CONTENT_TYPE = re.compile(rf"({_TCHAR})/({_TCHAR})")
# Types that would change the structure of the email (a part holding parts, or a whole
# message) rather than be a file in it; sent as opaque octets instead.
_STRUCTURAL = frozenset({"multipart", "message"})


@dataclass(frozen=True, slots=True)
class AttachmentFile:
    """A file as uploaded: its name and type as given, and its octets."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True, slots=True)
class StoredAttachment:
    """An attachment as listed: no octets."""

    id: int
    filename: str
    content_type: str
    size: int


def size_text(size: int) -> str:
    """A size as people read it: ``820 bytes``, ``14 KB``, ``2.4 MB``, ``20 MB`` (never
    rounded down to the limit it passed)."""
    if size < 1000:
        return f"{size} byte{'s' if size != 1 else ''}"
    if size < 1_000_000:
        return f"{math.ceil(size / 1000)} KB"
    tenths = math.ceil(size / 100_000)
    return f"{tenths // 10} MB" if tenths % 10 == 0 else f"{tenths / 10:.1f} MB"


def clean_filename(name: str) -> str:
    """The name without any folder a browser or script put before it, without control
    characters or quotes, at most ``MAX_FILENAME_CHARS`` (the extension kept)."""
    name = unicodedata.normalize("NFC", name.replace("\\", "/").rsplit("/", 1)[-1])
    name = "".join(
        " " if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp", "Cs") else ch for ch in name
    )
    name = " ".join(name.replace('"', "'").split()).strip(" .")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and 0 < len(extension) <= 10:
            name = stem[: MAX_FILENAME_CHARS - len(extension) - 1].rstrip() + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS].rstrip()
    return name or "attachment"


def clean_content_type(given: str, filename: str) -> str:
    """``type/subtype`` from what the uploader said (parameters dropped), else guessed
    from the name, else ``application/octet-stream``; never one that would be read as
    part of the email's own structure."""
    found = _CONTENT_TYPE.fullmatch(given.split(";", 1)[0].strip())
    if found is None:
        guessed = mimetypes.guess_type(filename, strict=False)[0] or ""
        found = _CONTENT_TYPE.fullmatch(guessed)
    if found is None or found.group(1).lower() in _STRUCTURAL:
        return DEFAULT_CONTENT_TYPE
    return f"{found.group(1)}/{found.group(2)}".lower()[:255]


def checked_files(
    files: list[AttachmentFile], limit: int
) -> tuple[list[AttachmentFile], list[str]]:
    """The files with clean names and types, and what is wrong with them, one sentence
    each: an empty file, too many files, or more than ``limit`` octets together."""
    problems: list[str] = []
    cleaned: list[AttachmentFile] = []
    for file in files:
        name = clean_filename(file.filename)
        if not file.data:
            problems.append(f"“{name}” is empty (0 bytes): it was not attached.")
            continue
        cleaned.append(AttachmentFile(name, clean_content_type(file.content_type, name), file.data))
    if len(cleaned) > MAX_ATTACHMENTS:
        problems.append(f"An email can carry at most {MAX_ATTACHMENTS} files.")
    total = sum(len(file.data) for file in cleaned)
    if total > limit:
        problems.append(
            f"The attachments come to {size_text(total)}; an email can carry at most "
            f"{size_text(limit)} of files."
        )
    return cleaned, problems


# ------------------------------------------------------------------ queries


def store_files(session: Session, message_id: int, files: list[AttachmentFile]) -> None:
    if not files:
        return
    session.execute(
        insert(_attachments),
        [
            {
                "message_id": message_id,
                "position": position,
                "filename": file.filename,
                "content_type": file.content_type,
                "size": len(file.data),
                "data": file.data,
            }
            for position, file in enumerate(files)
        ],
    )


def listed(session: Session, message_id: int) -> list[StoredAttachment]:
    """A message's attachments in the order they were attached, without their octets."""
    rows = session.execute(
        select(_attachments.c.id, _attachments.c.filename, _attachments.c.content_type,
               _attachments.c.size)
        .where(_attachments.c.message_id == message_id)
        .order_by(_attachments.c.position)
    )  # fmt: skip
    return [StoredAttachment(*row) for row in rows]


def files_of(connection: Any, message_id: int) -> list[AttachmentFile]:
    """A message's attachments with their octets, in order (a session or a connection)."""
    rows = connection.execute(
        select(_attachments.c.filename, _attachments.c.content_type, _attachments.c.data)
        .where(_attachments.c.message_id == message_id)
        .order_by(_attachments.c.position)
    )
    return [AttachmentFile(name, content_type, bytes(data)) for name, content_type, data in rows]


def file_of_sender(
    session: Session, user_id: int, message_id: int, attachment_id: int
) -> AttachmentFile | None:
    """One attachment of one of the user's own messages; None for anyone else's."""
    row = session.execute(
        select(_attachments.c.filename, _attachments.c.content_type, _attachments.c.data)
        .join(Message, Message.id == _attachments.c.message_id)
        .where(
            _attachments.c.id == attachment_id,
            _attachments.c.message_id == message_id,
            Message.user_id == user_id,
        )
    ).first()
    return None if row is None else AttachmentFile(row[0], row[1], bytes(row[2]))
