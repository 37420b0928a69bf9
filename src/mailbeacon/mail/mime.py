"""Building each recipient's copy as MIME.

Every copy of a message carries the same visible headers (From, To, Cc, Subject,
Date, Message-ID) and differs only in its bodies, which hold that recipient's
tokens. The visible headers are written and encoded here (:func:`header_block`,
with the encoded words of ``kit.header_text``), not by the ``email`` package:
how that package folds text it decoded from encoded words depends on the Python
release (CVE-2024-6923 wrote decoded line breaks back out). The ``email`` package
writes the MIME structure and bodies, and the finished copy is checked as a whole
(:func:`check_header_section`) before it can be sent. The worker builds a
:class:`CopyTemplate` once per message and fills in each copy's bodies,
quoted-printable encoded; :func:`build_copy_message` is the same copy built in one
piece, and a test holds the two to the same result.

HTML email goes out as ``multipart/alternative`` with the plain-text part first
and the HTML part last (RFC 2046 section 5.1.4: the last part is the preferred
one). Both parts are UTF-8 and quoted-printable, which keeps lines short (RFC
5322 section 2.1.1) whatever the author pasted. With attachments, that body is the
first part of a ``multipart/mixed`` (RFC 2046 section 5.1.3) and each file follows
as a base64 part with ``Content-Disposition: attachment`` (RFC 2183), its name
encoded by the ``email`` package as RFC 2231 parameters when it is not ASCII.
"""

from __future__ import annotations

import binascii
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime

from mailbeacon.kit.addresses import parse_address, split_address_list
from mailbeacon.kit.header_text import header_text_problem, phrase_words, unstructured_words
from mailbeacon.kit.html_tokens import REST, START, TEXT, attributes, html_tokens, strip_markup
from mailbeacon.kit.text_urls import DROPPABLE, find_text_urls, is_text_url, trim_text_url
from mailbeacon.kit.urls import normalise_url, web_destination
from mailbeacon.mail.attachments import AttachmentFile

# The multipart boundary starts with "=_": quoted-printable output can never
# contain that pair ("=" is always followed by two hex digits or a line end),
# so no body can collide with it (RFC 2045 section 6.7, RFC 2046 section 5.1.1).
_BOUNDARY_PREFIX = "=_mb_"
_ALTERNATIVE_PREFIX = "=_alt"
# Where the bodies go in a template; a random part per template, so that no subject or
# address can hold one (letters and digits pass quoted-printable unchanged).
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
    try:
        domain = parse_address(sender_address).email.rpartition("@")[2]
    except ValueError:
        domain = "mailbeacon.invalid"
    return f"<{secrets.token_hex(16)}@{domain}>"


class MalformedHeaders(ValueError):
    """A copy's headers cannot be written one field per header: it must not be sent."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"not sent, its headers would be malformed: {reason}")


# What a header line may be: RFC 5322 section 2.1.1 (at most 998 characters) and 2.2
# (printable US-ASCII field names, values of printable US-ASCII and white space).
_MAX_LINE = 998
_FOLD_AT = 76  # RFC 2047 section 2: lines with encoded words at most 76 characters
_FIELD_NAME = re.compile(rb"[!-9;-~]+:")
_LINE_OCTETS = re.compile(rb"[\t\x20-\x7e]*")
# The app's own Message-IDs are <hex@domain>; nothing that could end or split the field.
_MESSAGE_ID = re.compile(r"<[!-;=?-~]+@[!-;=?-~]+>")
_GROUP_OF_NOBODY = "undisclosed-recipients:;"


def _field(name: str, words: list[str]) -> bytes:
    """One header field, folded between words (RFC 5322 section 2.2.3): a fold turns the
    single space between two words into CRLF and that space, so unfolding gives the value
    back exactly."""
    lines: list[str] = []
    line = name + ":"
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line != name + ":":
            lines.append(line)
            line = " " + word
        else:
            line += " " + word
    lines.append(line)
    return "".join(f"{line}\r\n" for line in lines).encode("ascii")


def _checked_text(field: str, text: str) -> str:
    problem = header_text_problem(text)
    if problem is not None:
        raise MalformedHeaders(f"{field}: {problem}")
    return text


def _mailbox_words(field: str, name: str, address: str) -> list[str]:
    """``name <address>`` as header words: the name a phrase we encode ourselves."""
    try:
        email = parse_address(address).email  # ASCII: IDN domains in punycode
    except ValueError as exc:
        raise MalformedHeaders(f"{field}: {address!r} is not a valid address ({exc})") from None
    if not name:
        return [email]
    return [*phrase_words(_checked_text(field, name)), f"<{email}>"]


def _address_list_words(field: str, value: str) -> list[str]:
    """A stored To or Cc value (``Name <address>, ...`` as planning wrote it), read back
    into names and addresses and written again from them."""
    words: list[str] = []
    pieces = split_address_list(value)
    for index, piece in enumerate(pieces):
        try:
            address = parse_address(piece)
        except ValueError as exc:
            raise MalformedHeaders(f"{field}: {piece!r} is not a valid address ({exc})") from None
        mailbox = _mailbox_words(field, address.name, address.email)
        if index < len(pieces) - 1:
            mailbox[-1] += ","
        words.extend(mailbox)
    return words


def header_block(headers: VisibleHeaders) -> bytes:
    """The visible header fields every copy carries, written and encoded here (not by the
    ``email`` package, whose folding of decoded text differs between Python releases):
    From, To, Cc, Subject, Date and Message-ID, each ending in CRLF.

    Raises :class:`MalformedHeaders` for text that has no place in a header (control
    characters, encoded-word syntax, an address that does not parse).
    """
    fields = [_field("From", _mailbox_words("From", headers.sender_name, headers.sender_address))]
    if headers.to.strip():
        fields.append(_field("To", _address_list_words("To", headers.to)))
    else:
        # RFC 5322 section 3.6.3: a message sent only to Bcc recipients may show
        # an empty group instead of a To field, so nobody is disclosed.
        fields.append(_field("To", [_GROUP_OF_NOBODY]))
    if headers.cc.strip():
        fields.append(_field("Cc", _address_list_words("Cc", headers.cc)))
    fields.append(_field("Subject", unstructured_words(_checked_text("Subject", headers.subject))))
    fields.append(_field("Date", format_datetime(headers.date).split(" ")))
    if not _MESSAGE_ID.fullmatch(headers.message_id):
        raise MalformedHeaders(f"Message-ID: {headers.message_id!r} is not a message id")
    fields.append(_field("Message-ID", [headers.message_id]))
    return b"".join(fields)


def check_header_section(section: bytes, expected: list[str]) -> None:
    """Raise :class:`MalformedHeaders` unless ``section`` (header lines, each ending in
    CRLF, without the blank line after them) holds exactly the fields ``expected``, in
    that order, each one logical line: 7-bit, no bare CR or LF, no line over 998
    characters, every continuation line folded white space followed by text."""
    if section and not section.endswith(b"\r\n"):
        raise MalformedHeaders("the header block does not end with a line break")
    names: list[str] = []
    for line in section.split(b"\r\n")[:-1]:
        if len(line) > _MAX_LINE:
            raise MalformedHeaders(f"a header line is longer than {_MAX_LINE} characters")
        if not _LINE_OCTETS.fullmatch(line):
            raise MalformedHeaders(
                "a header line holds a bare CR or LF, a control character or 8-bit data"
            )
        if line[:1] in (b" ", b"\t"):
            if not names or not line.strip(b" \t"):
                raise MalformedHeaders("a header line is white space with no field to continue")
            continue
        found = _FIELD_NAME.match(line)
        if found is None:
            raise MalformedHeaders(f"a header line is not a field: {line[:40]!r}")
        names.append(found.group(0)[:-1].decode("ascii"))
    if names != expected:
        raise MalformedHeaders(f"the header fields would be {names}, not {expected}")


def _check_copy(raw: bytes, visible: bytes, body: EmailMessage) -> None:
    """The finished copy has the fields we wrote, then the MIME structure the ``email``
    package was asked for, and nothing before or between its parts that we did not put
    there. Runs before any SMTP transaction (once per message, on the template)."""
    end = raw.find(b"\r\n\r\n")
    top = raw[: end + 2] if end >= 0 else b""
    if not top.startswith(visible):
        raise MalformedHeaders("the header block ends before the fields written for it")
    visible_names = [
        found.group(0)[:-1].decode("ascii")
        for line in visible.split(b"\r\n")
        if (found := _FIELD_NAME.match(line)) is not None
    ]
    check_header_section(top, visible_names + list(body.keys()))
    if not body.is_multipart():
        return
    boundary = body.get_boundary()
    assert boundary is not None
    pieces = (b"\r\n" + raw[end + 4 :]).split(b"\r\n--" + boundary.encode("ascii"))
    parts = list(body.iter_parts())
    if pieces[0] or pieces[-1] != b"--\r\n" or len(pieces) != len(parts) + 2:
        raise MalformedHeaders("the MIME parts are not the ones written")
    for piece, part in zip(pieces[1:-1], parts, strict=True):
        end = piece.find(b"\r\n\r\n", 2)
        if not piece.startswith(b"\r\n") or end < 0:
            raise MalformedHeaders("a MIME part has no header block")
        check_header_section(piece[2 : end + 2], list(part.keys()))


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


def _mime_body(
    *,
    html: str | None,
    text: str | None,
    boundary: str | None,
    attachments: Sequence[AttachmentFile] = (),
) -> EmailMessage:
    """The MIME structure and bodies, with no visible headers: multipart/alternative with
    HTML, text/plain without; inside a multipart/mixed with the files after it."""
    boundary = boundary or _BOUNDARY_PREFIX + secrets.token_hex(12)
    msg = EmailMessage(policy=SMTP)
    msg.set_content(_normal_lines(text or ""), subtype="plain", cte="quoted-printable")
    if html is not None:
        msg.add_alternative(_normal_lines(html), subtype="html", cte="quoted-printable")
        # Inside a multipart/mixed the alternative has a boundary of its own, derived
        # from the outer one so that the same call gives the same octets; neither is a
        # prefix of the other (RFC 2046 section 5.1.1).
        msg.set_boundary(_ALTERNATIVE_PREFIX + boundary if attachments else boundary)
    if attachments:
        for file in attachments:
            maintype, _, subtype = file.content_type.partition("/")
            msg.add_attachment(
                file.data, maintype=maintype, subtype=subtype, filename=file.filename
            )
        msg.set_boundary(boundary)
    for part in msg.walk():
        if part is not msg:
            # add_alternative and add_attachment copy MIME-Version into the parts; only
            # the top needs it.
            del part["MIME-Version"]
    return msg


def build_copy_message(
    headers: VisibleHeaders,
    *,
    html: str | None,
    text: str | None,
    boundary: str | None = None,
    attachments: Sequence[AttachmentFile] = (),
) -> bytes:
    """One copy in one piece, as octets: our header block, then the MIME structure and
    bodies as the ``email`` package writes them, checked as a whole.

    Raises :class:`MalformedHeaders` rather than return a copy whose headers are not
    exactly the ones written here.
    """
    visible = header_block(headers)
    body = _mime_body(html=html, text=text, boundary=boundary, attachments=attachments)
    raw = visible + body.as_bytes()
    _check_copy(raw, visible, body)
    return raw


class CopyTemplate:
    """A message's MIME with holes for the bodies: built once, filled per copy."""

    def __init__(self, segments: tuple[bytes, ...], has_html: bool) -> None:
        self._segments = segments
        self.has_html = has_html

    @classmethod
    def build(
        cls,
        headers: VisibleHeaders,
        *,
        has_html: bool,
        attachments: Sequence[AttachmentFile] = (),
    ) -> CopyTemplate:
        """The template of a message's copies, its files encoded once for all of them;
        raises :class:`MalformedHeaders` if its headers cannot be written one field per
        header (nothing is sent then)."""
        nonce = secrets.token_hex(8).upper()
        text_mark, html_mark = _TEXT_MARK + nonce, _HTML_MARK + nonce
        raw = build_copy_message(
            headers,
            html=html_mark if has_html else None,
            text=text_mark,
            attachments=attachments,
        )
        marks = [text_mark, html_mark] if has_html else [text_mark]
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
# Content nobody reads: metadata, scripts, and what browsers show only when they lack a
# feature (frames, plugins, scripting) that all of them have.
_SKIP = frozenset({"head", "script", "style", "template", "title", "noscript", "iframe",
                   "noembed", "noframes"})  # fmt: skip
# Every tag the writer acts on; the tokenizer passes over all others.
_TAGS = _BLOCK | _SKIP | {"a", "body", "br", "img", "li", "td", "th"}
_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_WEB_SCHEME = re.compile(r"https?://", re.IGNORECASE)
# What ends an address in plain text (see kit.text_urls): a character that cannot
# continue it.
_URL_STOP = re.compile(r"""[\s<>"\x00-\x1f\x7f]""")
_MAX_INDENT = 8  # list levels shown by indentation; deeper ones are not indented further
# Tags and text runs read with their layout (line breaks, lists, links written out); the
# text after them is kept without layout. Each costs a trip through Python, and a body of
# millions of tiny tags must not cost seconds; an email has a few thousand.
_MAX_STEPS = 50_000
_MAX_GLUE = 64  # punctuation after an address that is checked before a space is forced


class _TextWriter:
    """Writes the text of HTML tokens, keeping what it needs to know about the output so
    far (trailing line breaks, the last character) up to date instead of re-reading it."""

    def __init__(self) -> None:
        self.out: list[str] = []
        self.skip = 0
        self.pre = 0
        # The open link: its href, and the output state where its text began. HTML has no
        # links in links: a new <a> ends the open one (the adoption agency algorithm).
        self.link: tuple[str, tuple[int, int, bool, str]] | None = None
        self.lists: list[int | None] = []  # item counter for <ol>, None for <ul>
        self.newlines = 0  # line breaks at the end of the output
        self.content = False  # anything but line breaks written
        self.last = "\n"  # the output's last character
        # An address just written, and what followed it without a break: text that
        # follows it must not turn it into another address for a plain-text reader.
        self.address: str | None = None
        self.after_address = ""
        self.addresses: dict[str, tuple[str, str] | None] = {}  # by href

    def _address_for_text(self, href: str) -> tuple[str, str] | None:
        if href not in self.addresses:
            self.addresses[href] = _address_for_text(href)
        return self.addresses[href]

    def _state(self) -> tuple[int, int, bool, str]:
        return len(self.out), self.newlines, self.content, self.last

    def _write(self, chunk: str) -> None:
        if not chunk:
            return
        if self.address is not None:
            chunk = self._keep_address_apart(chunk)
        self.out.append(chunk)
        stripped = chunk.rstrip("\n")
        if stripped:
            self.newlines = len(chunk) - len(stripped)
            self.content = True
        else:
            self.newlines += len(chunk)
        self.last = chunk[-1]

    def _keep_address_apart(self, chunk: str) -> str:
        """Put a space before ``chunk`` if, written right after the last address, it would
        make a plain-text reader see a different address (``(https://x.com/)here``)."""
        assert self.address is not None
        stop = _URL_STOP.search(chunk)
        head = chunk if stop is None else chunk[: stop.start()]
        if not head:
            self.address = None
            return chunk
        following = self.after_address + head
        if (
            len(following) > _MAX_GLUE
            or following.strip(DROPPABLE)  # anything but punctuation a reader drops
            or trim_text_url(self.address + following) != self.address
        ):
            self.address = None
            return " " + chunk
        if stop is None:
            self.after_address = following
        else:
            self.address = None
        return chunk

    def _write_address(self, url: str) -> None:
        if self.last not in " \n(":
            self._write(" ")  # glued to the word before, it would not be an address
        self._write(url)
        self.address, self.after_address = url, ""

    def _break(self, lines: int) -> None:
        """End the current line, leaving at least ``lines`` line breaks (no more)."""
        if self.content and self.newlines < lines:
            self._write("\n" * (lines - self.newlines))  # never any leading blank lines

    def _space(self) -> None:
        if self.last not in " \n":
            self._write(" ")

    def start(self, tag: str, written: str, times: int) -> None:
        """A start tag, ``times`` times in a row (nothing but spaces between them)."""
        if tag in _SKIP:
            self.skip += times
            return
        if tag == "body":
            self.skip = 0  # a body ends the head, closed or not
            return
        if self.skip:
            return
        if tag == "br":
            self._write("\n" * times)
        elif tag == "a":
            if self.link is not None:
                self.end("a", 1)
            href = attributes(written).get("href", "")
            if times > 1:  # each <a> ends the one before: all but the last have no text
                found = self._address_for_text(href)
                if found is not None:
                    self._write_address(found[0])
                    self._write(f" {found[0]}" * (times - 2))
                    self.address, self.after_address = found[0], ""
            self.link = (href, self._state())
        elif tag == "img":
            alt = " ".join(attributes(written).get("alt", "").split())
            if alt:
                self._space()
                self._write(" ".join([alt] * times))
        elif tag in ("ul", "ol"):
            self.lists.append(0 if tag == "ol" else None)
            self._break(2 if len(self.lists) == 1 else 0)
            self.lists.extend([self.lists[-1]] * (times - 1))
        elif tag == "li":
            indent = "  " * (min(max(len(self.lists), 1), _MAX_INDENT) - 1)
            counter = self.lists[-1] if self.lists else None
            if counter is not None:
                self.lists[-1] = counter + times
                bullets = [f"{indent}{n}. " for n in range(counter + 1, counter + times + 1)]
            else:
                bullets = [f"{indent}- "] * times
            self._break(1)
            self._write("\n".join(bullets))
        elif tag in ("td", "th"):
            self._space()
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre += times
            self._break(2 if tag in _PARAGRAPH else 1)

    def end(self, tag: str, times: int) -> None:
        """An end tag, ``times`` times in a row."""
        if tag in _SKIP:
            self.skip = max(self.skip - times, 0)
            return
        if self.skip:
            return
        if tag == "a" and self.link is not None:
            href, (start, newlines, content, last) = self.link
            self.link = None
            found = self._address_for_text(href)
            if found is None:
                return
            address, destination = found
            label = " ".join("".join(self.out[start:]).split())
            bare = address.split("://", 1)[1].rstrip("/")
            if (
                not label
                or label.rstrip("/") in (address.rstrip("/"), bare)
                or _shows_another_address(label, destination)
            ):
                del self.out[start:]
                self.newlines, self.content, self.last = newlines, content, last
                self._write_address(address)
            else:
                self._write(" (")
                self._write_address(address)
                self._write(")")
        elif tag in ("ul", "ol"):
            del self.lists[-times:]
            self._break(2 if not self.lists else 1)
        elif tag in _BLOCK:
            if tag == "pre":
                self.pre = max(self.pre - times, 0)
            self._break(2 if tag in _PARAGRAPH else 1)

    def text(self, data: str) -> None:
        if self.skip:
            return
        if self.pre:
            self._write(data)
            return
        data = _WHITESPACE.sub(" ", data)
        if data.startswith(" ") and self.last in " \n":
            data = data[1:]
        self._write(data)


def _address_for_text(href: str) -> tuple[str, str] | None:
    """How a web link's destination is written in the plain-text part, and the URL it
    leads to (serialised); None for a link that is not written there.

    The text part is tracked too, by finding the addresses in it, so what is written must
    be found there whole and lead exactly where the link did: the ``href`` as a browser
    reads it (tabs and newlines, from ``&#10;`` say, dropped), or else that URL serialised
    (``https://ex&#x0a;ample.com`` becomes ``https://example.com/``), percent-encoded
    with no spaces or quotes to cut it short. A backslash, which browsers read as a slash
    and people and other programs do not, is always written serialised. A link that
    neither form can carry (one ending in punctuation a reader would not take for part of
    it) is left out.
    """
    url = normalise_url(href)
    if _WEB_SCHEME.match(url) is None:
        return None
    destination = web_destination(url)
    if destination is None:
        return None  # a browser would not follow it either
    for address in (url, destination):
        if "\\" not in address and is_text_url(address):
            return address, destination
    return None


def _shows_another_address(label: str, destination: str) -> bool:
    """Whether a link's text holds an address that leads elsewhere than the link: left
    beside it, the plain-text part would carry a link the HTML never had."""
    if "://" not in label:
        return False
    return any(web_destination(u.url) != destination for u in find_text_urls(label))


def html_to_text(html: str) -> str:
    """A readable plain-text version of an HTML body; links become ``text (url)``.

    Keeping each web link's target in the text means the plain-text part's links
    are tracked like the HTML part's when the copy is instrumented. Linear in the size of
    the input, however it is malformed.
    """
    writer = _TextWriter()
    on_text, on_start, on_end = writer.text, writer.start, writer.end
    for kind, name, value, times in html_tokens(html, _TAGS, _MAX_STEPS):
        if kind == TEXT:
            on_text(value)
        elif kind == START:
            on_start(name, value, times)
        elif kind == REST:
            if writer.link is not None:
                on_end("a", 1)  # the rest is no link's text
            on_text(strip_markup(value))
        else:
            on_end(name, times)
    if writer.link is not None:
        writer.end("a", 1)
    text = "\n".join(line.rstrip(" ") for line in "".join(writer.out).split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")
