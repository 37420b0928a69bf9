"""What a demo recipient sends back: a reply, an automatic reply or a bounce, as mail.

The demo mailbox has no IMAP server, so these are built here as the RFC 5322
octets a real mail client or server would send, and go through the very same
incoming path as mail read over IMAP (``receiving.Receiver``): classified,
matched by their headers, stored. A reply quotes the delivered copy as mail
clients do, tracking pixel and tracked links included, which is what the app
must then show safely.
"""

from __future__ import annotations

import email
import email.policy
import html
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, getaddresses

from mailbeacon.sync.bounces import one_line

DEMO_MTA = "mailbeacon-demo.invalid"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The copy a demo recipient received, as the demo mailbox stored it."""

    recipient: str  # the envelope recipient
    recipient_name: str
    sender: str  # the From header as it came
    sender_address: str
    subject: str
    message_id: str
    date: str
    text: str
    html: str | None
    headers: bytes  # the header block, for a bounce to return


def read_delivered(raw: bytes, recipient: str) -> Delivered:
    """The parts of a delivered copy that an answer to it needs."""
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(msg, EmailMessage)
    name = ""
    for field in ("To", "Cc"):
        for display, address in getaddresses([str(msg.get(field, ""))]):
            if address.lower() == recipient.lower() and display:
                name = display
    text_part = msg.get_body(preferencelist=("plain",))
    html_part = msg.get_body(preferencelist=("html",))
    sender = " ".join(str(msg.get("From", "")).split())
    return Delivered(
        recipient=recipient,
        recipient_name=name,
        sender=sender,
        sender_address=getaddresses([sender])[0][1] if sender else "",
        subject=" ".join(str(msg.get("Subject", "")).split()),
        message_id=str(msg.get("Message-ID", "")).strip(),
        date=str(msg.get("Date", "")).strip(),
        text=str(text_part.get_content()) if text_part is not None else "",
        html=str(html_part.get_content()) if html_part is not None else None,
        headers=raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0] + b"\r\n",
    )


def _message_id(address: str) -> str:
    domain = address.rpartition("@")[2] or DEMO_MTA
    return f"<{secrets.token_hex(12)}@{domain}>"


def _answer(delivered: Delivered, subject: str, now: datetime) -> EmailMessage:
    msg = EmailMessage(policy=email.policy.SMTP)
    msg["From"] = Address(display_name=delivered.recipient_name, addr_spec=delivered.recipient)
    msg["To"] = delivered.sender
    msg["Subject"] = subject
    msg["Date"] = format_datetime(now)
    msg["Message-ID"] = _message_id(delivered.recipient)
    if delivered.message_id:
        msg["In-Reply-To"] = delivered.message_id
        msg["References"] = delivered.message_id
    return msg


def _reply_subject(subject: str) -> str:
    return subject if subject.lower().startswith("re:") else f"Re: {subject}"


def demo_reply(delivered: Delivered, text: str, now: datetime) -> bytes:
    """A person's reply above the quoted email, as Gmail writes one (text and HTML)."""
    msg = _answer(delivered, _reply_subject(delivered.subject), now)
    intro = f"On {delivered.date}, {delivered.sender} wrote:"
    quoted = "\n".join(f"> {line}" if line else ">" for line in delivered.text.splitlines())
    msg.set_content(f"{text.strip()}\n\n{intro}\n{quoted}\n")
    if delivered.html is not None:
        typed = "<br>".join(html.escape(line) for line in text.strip().splitlines())
        msg.add_alternative(
            f'<div dir="ltr">{typed}</div><br><div class="gmail_quote">'
            f'<div dir="ltr" class="gmail_attr">{html.escape(intro)}<br></div>'
            '<blockquote class="gmail_quote" style="margin:0 0 0 .8ex;'
            'border-left:1px #ccc solid;padding-left:1ex">'
            f"{delivered.html}</blockquote></div>",
            subtype="html",
        )
    return msg.as_bytes()


def demo_auto_reply(delivered: Delivered, now: datetime) -> bytes:
    """An out-of-office reply as RFC 3834 describes it (``Auto-Submitted: auto-replied``)."""
    msg = _answer(delivered, f"Automatic reply: {delivered.subject}", now)
    msg["Auto-Submitted"] = "auto-replied"
    msg["X-Autoreply"] = "yes"
    name = delivered.recipient_name or delivered.recipient
    msg.set_content(
        f"Thank you for your message. I am out of the office this week, with limited "
        f"access to email, and will answer when I am back.\n\n{name}\n"
    )
    return msg.as_bytes()


def demo_bounce(delivered: Delivered, now: datetime) -> bytes:
    """A non-delivery report in RFC 3464 form (as Postfix writes one), returning the
    headers of the bounced copy."""
    boundary = f"=_bounce_{secrets.token_hex(8)}"
    status, reply = "5.1.1", f"550 5.1.1 <{delivered.recipient}>: Recipient address rejected: "
    reply += "User unknown in virtual mailbox table"
    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{DEMO_MTA}>\r\n"
        f"To: {delivered.sender}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(now)}\r\n"
        f"Message-ID: {_message_id('mailer-daemon@' + DEMO_MTA)}\r\n"
        "Auto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"\r\n'
        "\r\n"
    )
    explanation = (
        "This is the mail system at host mailbeacon-demo.\r\n\r\n"
        "I'm sorry to have to inform you that your message could not be delivered to "
        "one or more recipients.\r\n\r\n"
        f"<{delivered.recipient}>: host mx.{delivered.recipient.rpartition('@')[2]} said: "
        f"{one_line(reply)}\r\n"
    )
    status_part = (
        f"Reporting-MTA: dns; {DEMO_MTA}\r\n"
        f"Arrival-Date: {format_datetime(now)}\r\n"
        "\r\n"
        f"Final-Recipient: rfc822; {delivered.recipient}\r\n"
        f"Original-Recipient: rfc822;{delivered.recipient}\r\n"
        "Action: failed\r\n"
        f"Status: {status}\r\n"
        f"Diagnostic-Code: smtp; {reply}\r\n"
    )
    body = (
        f"--{boundary}\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{explanation}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"{status_part}\r\n"
        f"--{boundary}\r\n"
        "Content-Type: text/rfc822-headers\r\n\r\n"
    )
    tail = f"\r\n--{boundary}--\r\n"
    return head.encode() + body.encode() + delivered.headers + tail.encode()
