"""The words a person wrote in a reply, without the quoted history below them.

Plain text goes through mail-parser-reply, which knows the "On ... wrote:" and
"From: / Sent:" separators of the common clients in a dozen languages. HTML is
turned into text first; there the quote is usually marked up (Gmail's
``gmail_quote``, ``<blockquote>``, Outlook's ``divRplyFwdMsg``), which is a more
reliable cut than any text pattern, so the text stops where that markup starts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.message import EmailMessage, MIMEPart
from html.parser import HTMLParser

from mailparser_reply import EmailReplyParser

# Languages mail-parser-reply knows that mailbeacon's users write in (English is
# always added by the library).
REPLY_LANGUAGES = ["de", "fr", "es", "it", "nl", "pl", "sv", "da", "cs"]
# Bodies beyond this are cut before parsing: the parser's patterns are regular
# expressions over the whole text, and nobody writes a longer reply by hand.
TEXT_LIMIT = 100_000

_parser = EmailReplyParser(languages=REPLY_LANGUAGES)


@dataclass(frozen=True, slots=True)
class ReplyText:
    new_text: str  # what the sender wrote this time
    full_text: str  # the whole body as text, quotes included


def reply_text(msg: EmailMessage) -> ReplyText | None:
    """The new and the full text of ``msg``, or None when it has no text body."""
    try:
        body = msg.get_body(preferencelist=("plain", "html"))
    except (KeyError, TypeError, ValueError):
        body = None
    if body is None:
        return None
    content = _content(body)
    if body.get_content_type() == "text/html":
        full, quote_at = html_to_text(content)
        new = latest_reply(full[:quote_at] if quote_at is not None else full)
        return ReplyText(new_text=new, full_text=_tidy(full))
    return ReplyText(new_text=latest_reply(content), full_text=_tidy(content))


def latest_reply(text: str) -> str:
    """The part of a plain-text reply above the first quote separator."""
    text = text[:TEXT_LIMIT].replace("\r\n", "\n")
    reply = _parser.parse_reply(text)
    new = reply if isinstance(reply, str) else text
    return _tidy(_drop_trailing_quote(new))


def _drop_trailing_quote(text: str) -> str:
    # A quote with no "wrote:" line above it (some mobile clients) is a block of
    # ">" lines at the end; interleaved answers keep their quotes.
    lines = text.rstrip().split("\n")
    while lines and (
        lines[-1].lstrip().startswith(">") or not lines[-1].strip("-_=*~ \t")
    ):  # quoted lines, blank lines, and the rule lines clients draw above a quote
        lines.pop()
    return "\n".join(lines)


def _tidy(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\xa0", " ")
    text = "\n".join(line.rstrip() for line in text.split("\n"))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def _content(part: MIMEPart) -> str:
    try:
        content = part.get_content()
    except (LookupError, ValueError, AssertionError):
        # An unknown or lying charset: read the bytes as UTF-8, replacing the rest.
        raw = part.get_payload(decode=True)
        return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else ""
    return content if isinstance(content, str) else ""


# -- HTML ---------------------------------------------------------------------------

_BLOCKS = {
    "address", "article", "blockquote", "br", "div", "dl", "dt", "dd", "footer", "h1",
    "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "ol", "p", "pre", "section",
    "table", "tr", "ul",
}  # fmt: skip
_SKIPPED = {"head", "script", "style", "title", "template"}
# Where the quoted history starts, by client: Gmail, Yahoo, Outlook (desktop and
# web), Thunderbird and Apple Mail (blockquote type=cite).
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix")
_QUOTE_IDS = (
    "divrplyfwdmsg",
    "appendonsend",
    "olk_src_body_section",
    "mail-editor-reference-message-container",
)


class _TextCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.skip_depth = 0
        self.quote_at: int | None = None

    def _emit(self, text: str) -> None:
        self.parts.append(text)
        self.length += len(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self.skip_depth += 1
            return
        if self.quote_at is None and self._starts_quote(tag, attrs):
            self.quote_at = self.length
        if tag in _BLOCKS:
            self._emit("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag in _SKIPPED:
            self.skip_depth -= 1

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self.skip_depth = max(0, self.skip_depth - 1)
        elif tag in _BLOCKS:
            self._emit("\n")

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        self._emit(re.sub(r"[ \t\r\n]+", " ", data))

    @staticmethod
    def _starts_quote(tag: str, attrs: list[tuple[str, str | None]]) -> bool:
        if tag == "blockquote":
            return True
        values = {name: (value or "").lower() for name, value in attrs}
        classes = values.get("class", "").split()
        if any(c in _QUOTE_CLASSES for c in classes):
            return True
        return values.get("id", "") in _QUOTE_IDS


def html_to_text(html: str) -> tuple[str, int | None]:
    """Readable text of an HTML body, and where in it the quoted history starts."""
    collector = _TextCollector()
    collector.feed(html[: TEXT_LIMIT * 4])
    collector.close()
    text = "".join(collector.parts)
    # Spaces around the line breaks the block tags produced carry no meaning.
    cut = collector.quote_at
    if cut is not None:
        head = _collapse(text[:cut])
        return head + "\n" + _collapse(text[cut:]), len(head)
    return _collapse(text), None


def _collapse(text: str) -> str:
    text = re.sub(r" *\n *", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()
