"""Building each recipient's copy as MIME with the stdlib ``email`` package.

Every copy of a message carries the same visible headers (From, To, Cc, Subject,
Date, Message-ID) and differs only in its bodies, which hold that recipient's
tokens. Building a full :class:`~email.message.EmailMessage` costs about a
millisecond, nearly all of it parsing and folding the same headers again, so the
worker builds a :class:`CopyTemplate` once per message with the ``email``
package (headers, MIME structure, boundary) and fills in each copy's bodies,
quoted-printable encoded. :func:`build_copy_message`
is the same copy built in one piece; a test holds the two to the same result.

HTML email goes out as ``multipart/alternative`` with the plain-text part first
and the HTML part last (RFC 2046 section 5.1.4: the last part is the preferred
one). Both parts are UTF-8 and quoted-printable, which keeps lines short (RFC
5322 section 2.1.1) whatever the author pasted.
"""

from __future__ import annotations

import binascii
import re
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from html.parser import HTMLParser

# The multipart boundary starts with "=_": quoted-printable output can never
# contain that pair ("=" is always followed by two hex digits or a line end),
# so no body can collide with it (RFC 2045 section 6.7, RFC 2046 section 5.1.1).
_BOUNDARY_PREFIX = "=_mb_"
_TEXT_MARK = "MAILBEACONTEXTBODYMARK"
_HTML_MARK = "MAILBEACONHTMLBODYMARK"


@dataclass(frozen=True, slots=True)
class VisibleHeaders:
    """What every copy of a message shows, identical for all recipients."""

    sender_name: str
    sender_address: str
    to: str  # formatted address list, may be empty (a Bcc-only email)
    cc: str
    subject: str
    date: datetime
    message_id: str  # with its angle brackets


def new_message_id(sender_address: str) -> str:
    """A random Message-ID in the sender's domain (RFC 5322 section 3.6.4)."""
    domain = sender_address.rpartition("@")[2] or "mailbeacon.invalid"
    return f"<{secrets.token_hex(16)}@{domain}>"


def _set_headers(msg: EmailMessage, headers: VisibleHeaders) -> None:
    msg["From"] = Address(display_name=headers.sender_name, addr_spec=headers.sender_address)
    if headers.to:
        msg["To"] = headers.to
    else:
        # RFC 5322 section 3.6.3: a message sent only to Bcc recipients may show
        # an empty group instead of a To field, so nobody is disclosed.
        msg["To"] = "undisclosed-recipients:;"
    if headers.cc:
        msg["Cc"] = headers.cc
    msg["Subject"] = headers.subject
    msg["Date"] = format_datetime(headers.date)
    msg["Message-ID"] = headers.message_id


def _normal_lines(body: str) -> str:
    return body.replace("\r\n", "\n").replace("\r", "\n")


def encode_body(body: str) -> bytes:
    """A body as UTF-8 quoted-printable with CRLF line ends (RFC 2045 section 6.7).

    ``binascii.b2a_qp`` is the C encoder behind the stdlib's ``quopri``; the
    email package's own pure-Python one costs ten times as much per copy.
    """
    octets = _normal_lines(body).encode("utf-8", errors="replace")
    encoded = binascii.b2a_qp(octets, quotetabs=False, istext=True, header=False)
    encoded = encoded.replace(b"\n", b"\r\n")
    if not encoded.endswith(b"\r\n"):
        encoded += b"\r\n"
    return encoded


def build_copy_message(
    headers: VisibleHeaders, *, html: str | None, text: str | None, boundary: str | None = None
) -> EmailMessage:
    """One copy in one piece: multipart/alternative with HTML, text/plain without."""
    msg = EmailMessage(policy=SMTP)
    _set_headers(msg, headers)
    msg.set_content(_normal_lines(text or ""), subtype="plain", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(_normal_lines(html), subtype="html", cte="quoted-printable")
        for part in msg.iter_parts():
            # add_alternative copies MIME-Version into the part; only the top needs it.
            del part["MIME-Version"]
        msg.set_boundary(boundary or _BOUNDARY_PREFIX + secrets.token_hex(12))
    return msg


class CopyTemplate:
    """A message's MIME with holes for the bodies: built once, filled per copy."""

    def __init__(self, segments: tuple[bytes, ...], has_html: bool) -> None:
        self._segments = segments
        self.has_html = has_html

    @classmethod
    def build(cls, headers: VisibleHeaders, *, has_html: bool) -> CopyTemplate:
        msg = build_copy_message(headers, html=_HTML_MARK if has_html else None, text=_TEXT_MARK)
        raw = msg.as_bytes()
        marks = [_TEXT_MARK, _HTML_MARK] if has_html else [_TEXT_MARK]
        segments: list[bytes] = []
        rest = raw
        for mark in marks:
            hole = mark.encode("ascii") + b"\r\n"
            before, found, rest = rest.partition(hole)
            if not found or hole in rest:
                raise AssertionError(f"body mark {mark} not found exactly once in the template")
            segments.append(before)
        segments.append(rest)
        return cls(tuple(segments), has_html)

    def render(self, *, html: str | None, text: str | None) -> bytes:
        """The copy's MIME octets with its own (tracked) bodies filled in."""
        if self.has_html:
            return b"".join(
                (
                    self._segments[0],
                    encode_body(text or ""),
                    self._segments[1],
                    encode_body(html or ""),
                    self._segments[2],
                )
            )
        return self._segments[0] + encode_body(text or "") + self._segments[1]


# ---------------------------------------------------------------- HTML to text

_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "dd", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header",
        "hr", "main", "nav", "ol", "p", "pre", "section", "table", "tbody", "thead", "tfoot",
        "tr", "ul",
    }
)  # fmt: skip
_PARAGRAPH = frozenset({"blockquote", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "ol", "p", "pre",
                        "table", "ul"})  # fmt: skip
_SKIP = frozenset({"head", "script", "style", "template", "title", "noscript"})
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")


class _TextWriter(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0
        self.links: list[tuple[str, int]] = []  # (href, index in out where the text began)
        self.lists: list[int | None] = []  # item counter for <ol>, None for <ul>

    def _break(self, lines: int) -> None:
        """End the current line, leaving at least ``lines`` line breaks (no more)."""
        have = 0
        for chunk in reversed(self.out):
            stripped = chunk.rstrip("\n")
            have += len(chunk) - len(stripped)
            if stripped:
                break
        else:
            return  # nothing written yet: no leading blank lines
        if have < lines:
            self.out.append("\n" * (lines - have))

    def _space(self) -> None:
        if self._tail() not in " \n":
            self.out.append(" ")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self.skip += 1
            return
        if self.skip:
            return
        attr = dict(attrs)
        if tag == "br":
            self.out.append("\n")
        elif tag == "a":
            self.links.append((attr.get("href") or "", len(self.out)))
        elif tag == "img":
            alt = " ".join((attr.get("alt") or "").split())
            if alt:
                self._space()
                self.out.append(alt)
        elif tag in ("ul", "ol"):
            self.lists.append(0 if tag == "ol" else None)
            self._break(2 if len(self.lists) == 1 else 0)
        elif tag == "li":
            depth = max(len(self.lists), 1)
            counter = self.lists[-1] if self.lists else None
            if counter is not None:
                self.lists[-1] = counter + 1
                bullet = f"{counter + 1}. "
            else:
                bullet = "- "
            self._break(1)
            self.out.append("  " * (depth - 1) + bullet)
        elif tag in ("td", "th"):
            self._space()
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre += 1
            self._break(2 if tag in _PARAGRAPH else 1)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag == "a":
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skip = max(self.skip - 1, 0)
            return
        if self.skip:
            return
        if tag == "a" and self.links:
            href, start = self.links.pop()
            label = " ".join("".join(self.out[start:]).split())
            if href.lower().startswith(("http://", "https://")):
                bare = href.split("://", 1)[1].rstrip("/")
                if not label or label.rstrip("/") in (href.rstrip("/"), bare):
                    del self.out[start:]
                    self.out.append(href)
                else:
                    self.out.append(f" ({href})")
        elif tag in ("ul", "ol"):
            if self.lists:
                self.lists.pop()
            self._break(2 if not self.lists else 1)
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre = max(self.pre - 1, 0)
            self._break(2 if tag in _PARAGRAPH else 1)

    def _tail(self) -> str:
        for chunk in reversed(self.out):
            if chunk:
                return chunk[-1]
        return "\n"

    def handle_data(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self.out.append(data)
            return
        data = _WHITESPACE.sub(" ", data)
        if data.startswith(" ") and self._tail() in " \n":
            data = data[1:]
        self.out.append(data)


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML body; links become ``text (url)``.

    Keeping each web link's target in the text means the plain-text part's links
    are tracked like the HTML part's when the copy is instrumented.
    """
    writer = _TextWriter()
    writer.feed(html)
    writer.close()
    text = "\n".join(line.rstrip(" ") for line in "".join(writer.out).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")
