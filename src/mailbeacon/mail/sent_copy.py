"""The sender's own copy of a sent email, for the mailbox's Sent folder.

It carries what every recipient saw (From, To, Cc, Subject, Date and the same
Message-ID, so mail clients thread replies under it) plus a Bcc header naming
the Bcc recipients, which only the sender may see (RFC 5322 section 3.6.3).
The body is the one the sender wrote, with the same attachments: no pixel, every
link as written, so opening it in any mail client fires nothing. Sync appends it
(``SentCopySource``).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from mailbeacon.mail import attachments
from mailbeacon.mail.attachments import AttachmentFile
from mailbeacon.mail.mime import VisibleHeaders, build_copy_message, header_block
from mailbeacon.models import Message, RecipientCopy, RecipientKind

_FOLD_AT = 76


def bcc_field(addresses: list[str]) -> bytes:
    """``Bcc: a@x, b@y`` folded between addresses (RFC 5322 section 2.2.3).

    Copies keep bare addresses, validated at planning; one that is not printable
    ASCII (an internationalised local part) cannot go in a header unencoded and is
    left out of this informational field.
    """
    usable = [a for a in addresses if a.isascii() and a.isprintable() and " " not in a]
    if not usable:
        return b""
    lines: list[str] = []
    line = "Bcc:"
    for index, address in enumerate(usable):
        word = address + ("," if index < len(usable) - 1 else "")
        if len(line) + 1 + len(word) > _FOLD_AT and line != "Bcc:":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "".join(f"{line}\r\n" for line in lines).encode("ascii")


def build_sent_copy(
    message: Message, bcc: list[str], files: Sequence[AttachmentFile] = ()
) -> bytes:
    """The Sent-folder copy of ``message`` as RFC 5322 octets (CRLF line ends), with the
    files every recipient got."""
    headers = VisibleHeaders(
        sender_name=message.sender_name,
        sender_address=message.sender_address,
        to=message.to_header,
        cc=message.cc_header,
        subject=message.subject,
        date=message.created_at,
        message_id=message.message_id_header,
    )
    raw = build_copy_message(
        headers, html=message.body_html, text=message.body_text, attachments=files
    )
    visible = header_block(headers)
    assert raw.startswith(visible)
    # The Bcc field goes right after the fields the recipients saw, before MIME's own.
    return visible + bcc_field(bcc) + raw[len(visible) :]


class SentCopies:
    """``sync.ports.SentCopySource``: what the sync worker appends to Sent."""

    def sent_copy(self, session: Session, message_id: int) -> bytes | None:
        """The copy of one sent message, or None if it no longer exists."""
        message = session.get(Message, message_id)
        if message is None or not message.message_id_header:
            return None
        bcc = list(
            session.scalars(
                select(RecipientCopy.address)
                .where(
                    RecipientCopy.message_id == message_id,
                    RecipientCopy.kind == RecipientKind.BCC,
                )
                .order_by(RecipientCopy.id)
            )
        )
        return build_sent_copy(message, bcc, attachments.files_of(session, message_id))
