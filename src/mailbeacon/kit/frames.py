"""Documents for sandboxed frames that show an email's body inside a page.

Every email body the app shows sits in an ``<iframe srcdoc>`` without
``allow-scripts`` and without ``allow-same-origin``: nothing in it runs, and its
requests carry none of the site's cookies. These helpers build the document
the frame shows; what goes into it (sanitised or as delivered) is the caller's
choice.
"""

from __future__ import annotations

import html
import re

# Links open in a new tab, as in a webmail client; the first <base> with a target wins.
_BASE = '<base target="_blank">'
_STYLE = (
    "<style>body{margin:1rem;font:15px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,"
    "sans-serif;color:#1d2433;word-wrap:break-word}img{max-width:100%;height:auto}"
    "pre{white-space:pre-wrap;font:14px/1.5 ui-monospace,monospace}</style>"
)
_HEAD = f"<!doctype html><html><head><meta charset=utf-8>{_BASE}{_STYLE}</head><body>"
_TAIL = "</body></html>"
_HEAD_TAG = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
_DOCTYPE = re.compile(r"^\s*<!doctype[^>]*>", re.IGNORECASE)
_URL = re.compile(r"https?://[^\s<>\"'()\[\]]+[^\s<>\"'()\[\].,;:!?]", re.IGNORECASE)


def html_document(clean_body: str) -> str:
    """An already sanitised body as a complete document, with the app's reading style."""
    return _HEAD + clean_body + _TAIL


def delivered_html_document(body_html: str) -> str:
    """An HTML body exactly as a mail client received it (the demo inbox), only made to
    open its links in a new tab."""
    found = _HEAD_TAG.search(body_html) or _DOCTYPE.match(body_html)
    if found:
        return body_html[: found.end()] + _BASE + body_html[found.end() :]
    return _BASE + body_html


def text_document(body_text: str, *, clickable_urls: bool = False) -> str:
    """A plain-text body, escaped and wrapped; with ``clickable_urls`` its URLs become links,
    as a mail client shows them."""
    if not clickable_urls:
        return _HEAD + "<pre>" + html.escape(body_text) + "</pre>" + _TAIL
    pieces: list[str] = []
    last = 0
    for match in _URL.finditer(body_text):
        pieces.append(html.escape(body_text[last : match.start()]))
        url = html.escape(match.group(0))
        pieces.append(f'<a href="{url}">{url}</a>')
        last = match.end()
    pieces.append(html.escape(body_text[last:]))
    return _HEAD + "<pre>" + "".join(pieces) + "</pre>" + _TAIL


_BLOCK_TAG = re.compile(r"<(?:p|div|br|li|tr|h[1-6]|blockquote|table|hr)\b", re.IGNORECASE)
_IMAGE_TAG = re.compile(r"<img\b", re.IGNORECASE)
_NON_TEXT = re.compile(r"<(style|head|script)\b.*?</\1\s*>|<[^>]*>", re.IGNORECASE | re.DOTALL)


def estimated_frame_height(document: str) -> int:
    """About how tall (CSS pixels) a frame must be to show a document without scrolling.

    The frame runs no script and is not same-origin (see the module's docstring),
    so the page cannot measure what it shows: this estimates from the document's
    blocks, text and images, within bounds, and the page lets the reader resize it.
    """
    text = html.unescape(_NON_TEXT.sub(" ", document))
    # In a plain-text body (one <pre>) every line break is a line; in HTML most are markup.
    breaks = text.count("\n") if "<pre>" in document else text.count("\n") // 4
    blocks = len(_BLOCK_TAG.findall(document)) + breaks
    lines = max(blocks, 1) + len(" ".join(text.split())) // 80
    estimate = 40 + lines * 30 + len(_IMAGE_TAG.findall(document)) * 160
    return max(140, min(estimate, 1200))
