"""Instrument one copy of an email: seal each web link in a click token, add an open pixel.

Only the values of ``href`` attributes (and web addresses in the plain-text part) are
replaced, and the pixel is inserted; every other character of the bodies stays as written.
Positions number the distinct destinations in first-seen order, HTML before text, so the same
body always yields the same positions and, for one copy, the same tokens: instrumenting again
is stable, and `find_links` can plan the per-link rows before any copy is made.

A link is tracked only if the edge can send the reader exactly where it leads (see
`is_trackable_url`), and at most MAX_TRACKED_LINKS destinations per email; every other link
is left as written, and so still works, untracked.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from typing import NamedTuple

from mailbeacon.kit.text_urls import TextUrl, find_text_urls
from mailbeacon.kit.urls import is_web_destination, web_destination
from mailbeacon.tracking import tokens
from mailbeacon.tracking.html_links import (
    INVISIBLE_CHARS,
    MAX_LINK_SITES,
    HtmlScan,
    LinkSite,
    anchor_text,
    scan_html,
)
from mailbeacon.tracking.tokens import TokenCodec, click_token_fits

__all__ = [
    "MAX_TRACKED_LINKS",
    "Instrumented",
    "TrackedLink",
    "click_url",
    "find_links",
    "instrument",
    "is_empty_body",
    "is_trackable_url",
    "open_url",
    "pixel_html",
]

CLICK_PATH = "/t/c/"
OPEN_PATH = "/t/o/"
# Distinct destinations tracked in one email; any further ones are left as written. Real
# emails stay far below (the corpus tops out at 12, long newsletters at a few hundred),
# while every tracked destination costs a token per copy and a stored row per message: the
# cap keeps a pathological body from costing seconds and megabytes on every copy of a send.
# Link positions travel in 16 bits, so the cap must stay below 65,536.
MAX_TRACKED_LINKS = 1000


# Named tuples rather than frozen dataclasses: as cheap to build as a tuple, where a frozen
# dataclass sets each field through object.__setattr__ (some 10,000 instructions for an
# Instrumented, over 1% of what a first copy costs).
class TrackedLink(NamedTuple):
    """One destination that clicks are counted for, in every copy of a message."""

    position: int  # 0-based, distinct destinations in first-seen order (HTML, then text)
    url: str  # the destination as a browser would follow it (entities decoded)
    text: str  # short visible anchor text if known, else ""


class Instrumented(NamedTuple):
    """The bodies of one copy, ready to send, and what was done to them."""

    html: str | None
    text: str | None
    links: list[TrackedLink]
    open_tracked: bool  # this call inserted a pixel
    links_tracked: bool  # this call rewrote at least one link
    empty_body: bool  # nothing visible: nothing was tracked and the bodies are unchanged
    # Distinct trackable destinations left as written because of MAX_TRACKED_LINKS.
    links_over_limit: int = 0


def click_url(base_url: str, token: str) -> str:
    """The address a tracked link points to (a trailing slash on ``base_url`` is ignored)."""
    return f"{base_url.rstrip('/')}{CLICK_PATH}{token}"


def open_url(base_url: str, token: str) -> str:
    """The address of an open pixel (a trailing slash on ``base_url`` is ignored)."""
    return f"{base_url.rstrip('/')}{OPEN_PATH}{token}.gif"


def _attribute_text(value: str) -> str:
    """Escape for a quoted attribute value, in pure ASCII so any charset can carry it."""
    return html_lib.escape(value, quote=True).encode("ascii", "xmlcharrefreplace").decode("ascii")


def pixel_html(src: str) -> str:
    """A 1x1 transparent image that takes no room.

    ``display:block`` keeps it out of a line box, which would otherwise add a line's height
    under the last table; the zeroed border, margin and padding and the max sizes stop
    client style sheets from growing it. It is not hidden with ``display:none``, which some
    clients treat as a reason not to fetch the image at all.
    """
    return f"{_PIXEL_START}{_attribute_text(src)}{_PIXEL_END}"


_PIXEL_HTML = (
    '<img src="{src}" width="1" height="1" alt="" border="0" '
    'style="display:block;width:1px;height:1px;max-width:1px;max-height:1px;'
    'border:0;margin:0;padding:0;overflow:hidden;" />'
)
# Joined around the address: str.format would parse the template on every copy.
_PIXEL_START, _PIXEL_END = _PIXEL_HTML.split("{src}")


@functools.lru_cache(maxsize=16)
def _attribute_base(base: str) -> str:
    """``base`` escaped for an attribute; a token (base64url) and our paths need no escape."""
    return _attribute_text(base)


# Template syntax that a sending tool fills in later: sealing it into a token would freeze
# the placeholder, and the link would lead nowhere once the tool had done its work. Each is
# an opener with a closer somewhere after it. Searched for as plain strings: a lazy regex
# (`\{\{.*?\}\}`) tries every opener against the rest of the text, quadratic on `{{{{...`,
# while if the first opener has no closer after it, no later one has either.
_PLACEHOLDER_DELIMITERS = (
    ("{{", "}}"), ("{%", "%}"), ("{!", "}"), ("{$", "}"),  # Handlebars, Liquid, Jinja, Smarty
    ("*|", "|*"),  # Mailchimp merge tags
    ("%%", "%%"),  # Salesforce Marketing Cloud, Acoustic
    ("[[", "]]"),  # Campaign Monitor-style tags
    ("${", "}"),  # ${var} merge fields
    ("<%", "%>"),  # ERB and ASP
)  # fmt: skip
# $var$ merge fields; linear, as the run of name characters cannot hold the closing "$".
_MERGE_FIELD = re.compile(r"\$[A-Za-z_][\w.:\-]*+\$")
# A click URL minted by any mailbeacon edge: never wrap one twice, whatever its host.
_OUR_CLICK_URL = re.compile(r"/t/c/[A-Za-z0-9_-]{32,}\Z")


def _path_may_be_rewritten(url: str) -> bool:
    """Whether the URL parser may rewrite the path: backslashes and dot segments,
    percent-encoded ones too (`in` is far cheaper than a search with alternatives)."""
    return "\\" in url or "/." in url or "%2e" in url or "%2E" in url


_AUTHORITY = re.compile(r"https?://([^/?#\\]*)", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")
_VISIBLE_TEXT = re.compile(rf"[^{INVISIBLE_CHARS}]")


_PLACEHOLDER_OPENING = re.compile(r"[{*%\[$<]")  # the first character of every opener


def _has_placeholder(url: str) -> bool:
    if _PLACEHOLDER_OPENING.search(url) is None:
        return False
    for opener, closer in _PLACEHOLDER_DELIMITERS:
        start = url.find(opener)
        if start >= 0 and url.find(closer, start + len(opener)) >= 0:
            return True
    return _MERGE_FIELD.search(url) is not None


def _has_host(url: str) -> bool:
    """Whether the address names a host at all; "http://" alone is a template's blank."""
    m = _AUTHORITY.match(url)
    if m is None:
        return False
    host = m.group(1).rpartition("@")[2]
    if host.startswith("["):
        return host.find("]") > 1
    return host.partition(":")[0] != ""


# The shape of nearly every destination in email, which passes every check of
# `_is_trackable_url_exact` but the length: http(s), a host of ASCII letters, digits and
# hyphens in non-empty dot-separated labels, none of them "xn--" (Punycode, which the IDNA
# step must validate) and the last starting with a letter (so that the URL Standard's
# "ends in a number" rule, section 3.5, does not make it an IPv4 address), no userinfo and
# no port; then printable ASCII without "{", "*", "[", "$" or "<", which open every
# placeholder, and "%" only before two hex digits, so never "%%". The parser fails nowhere
# in a path, query or fragment (section 4.4). Anything else takes the exact checks; the
# tests hold the two to the same answers.
_PLAIN_WEB_URL = re.compile(
    r"[hH][tT][tT][pP][sS]?+://"
    r"(?:(?![xX][nN]--)[-0-9A-Za-z]++\.)*+(?![xX][nN]--)[A-Za-z][-0-9A-Za-z]*+"
    r"(?:[/?#](?:[!-#&-)+-;=-Z\\-z|-~]++|%[0-9A-Fa-f]{2})*+)?+"
)


def is_trackable_url(url: str, base_url: str | None = None) -> bool:
    """Whether a web destination may be sealed into a click token.

    It must name a host, hold no template placeholder, not be a click URL already (of any
    mailbeacon edge, or malformed ones under ``base_url``), and be proper text. And the
    edge must be able to send the reader exactly where the link leads: the URL parser of a
    browser must accept it (see `mailbeacon.kit.urls`; the edge redirects to what that
    parser makes of the sealed text) and it must fit in a click token. Whatever fails
    stays as written and works as it always would, untracked.
    """
    # A click URL of ours, under any base, holds the click path.
    if (
        CLICK_PATH not in url
        and _PLAIN_WEB_URL.fullmatch(url) is not None
        and not _path_may_be_rewritten(url)
    ):
        # ASCII: a character is a byte.
        return len(url) <= tokens.MAX_PLAIN_CLICK_URL_BYTES or click_token_fits(url)
    return _is_trackable_url_exact(url, base_url)


def _is_trackable_url_exact(url: str, base_url: str | None) -> bool:
    """`is_trackable_url` for any text, check by check."""
    if not _has_host(url) or _has_placeholder(url) or _OUR_CLICK_URL.search(url):
        return False
    if base_url is not None and url.startswith(base_url + CLICK_PATH):
        return False
    # Bytes that did not decode in the body's charset cannot be sealed as UTF-8 text.
    if not url.isascii() and _SURROGATE.search(url) is not None:
        return False
    if not is_web_destination(url) or not click_token_fits(url):
        return False
    if _path_may_be_rewritten(url):
        # The browser follows the path as parsed: "/t\c\<token>" and "/t/x/../c/<token>"
        # are click URLs of ours, and wrapping one would count its clicks on another copy.
        destination = web_destination(url)
        return destination is not None and _OUR_CLICK_URL.search(destination) is None
    return True


def _text_is_visible(text: str | None) -> bool:
    return text is not None and _VISIBLE_TEXT.search(text) is not None


def is_empty_body(html: str | None, text: str | None) -> bool:
    """Whether neither part shows anything: no text but spaces, and no image or the like."""
    if _text_is_visible(text):
        return False
    return html is None or not scan_html(html, stop_at_visible=True).visible


def _holds_open_prefix(html: str, base: str) -> bool:
    """Whether ``html`` holds the start of an open URL under ``base``, as written or escaped."""
    escaped = _attribute_base(base)
    return f"{base}{OPEN_PATH}" in html or (escaped != base and f"{escaped}{OPEN_PATH}" in html)


class _Plan:
    """Positions of the trackable destinations, and the sites that lead to each."""

    __slots__ = ("has_open_path", "html_sites", "links", "over_limit", "positions", "text_urls")

    def __init__(
        self, html: str | None, scan: HtmlScan | None, text_urls: list[TextUrl], base: str | None
    ) -> None:
        self.positions: dict[str, int] = {}
        self.html_sites: list[LinkSite] = []
        self.text_urls: list[TextUrl] = []
        texts: list[str] = []
        # Each destination is judged once, however often it appears; None: over the limit.
        verdicts: dict[str, int | None] = {}
        over_limit = 0

        def position_of(url: str) -> int | None:
            nonlocal over_limit
            if url in verdicts:
                return verdicts[url]
            position = None
            if is_trackable_url(url, base):
                if len(self.positions) < MAX_TRACKED_LINKS:
                    position = self.positions[url] = len(self.positions)
                    texts.append("")
                else:
                    over_limit += 1
            verdicts[url] = position
            return position

        if html is not None and scan is not None:
            for site in scan.links:
                position = None if site.notrack else position_of(site.url)
                if position is None:
                    continue
                self.html_sites.append(site)
                if not texts[position]:  # the first occurrence with words on it names it
                    texts[position] = anchor_text(html, site)
        for found in text_urls:
            if position_of(found.url) is not None:
                self.text_urls.append(found)
        self.over_limit = over_limit
        self.links = [TrackedLink(p, url, texts[p]) for url, p in self.positions.items()]
        # Only a body that holds our open URL's prefix at all can hold a copy's pixel
        # already. The whole prefix, not just the path: a long needle is found several
        # times faster than "/t/o/", whose characters fill every HTML document.
        self.has_open_path = (
            html is not None and base is not None and _holds_open_prefix(html, base)
        )


# A message goes out as one copy per recipient, all with the same bodies: the scan and the
# positions are worked out once per body and only the tokens differ per copy. Keyed by the
# strings themselves, so a hit is an exact match; the results are never mutated.
@functools.lru_cache(maxsize=8)
def _scanned(html: str | None, text: str | None) -> tuple[HtmlScan | None, list[TextUrl], bool]:
    scan = scan_html(html) if html is not None else None
    # Addresses past the first MAX_LINK_SITES stay as written, as links in HTML do.
    urls = find_text_urls(text, MAX_LINK_SITES) if text is not None else []
    empty = not (_text_is_visible(text) or (scan is not None and scan.visible))
    return scan, urls, empty


@functools.lru_cache(maxsize=8)
def _plan(
    html: str | None, text: str | None, base: str | None
) -> tuple[HtmlScan | None, _Plan, bool]:
    scan, urls, empty = _scanned(html, text)
    return scan, _Plan(html, scan, urls, base), empty


def clear_caches() -> None:
    """Forget the per-body scans (benchmarks measure a body seen for the first time)."""
    _plan.cache_clear()
    _scanned.cache_clear()
    tokens.clear_caches()


def find_links(
    html: str | None, text: str | None, *, base_url: str | None = None
) -> list[TrackedLink]:
    """The links `instrument` would track, with the same positions, for any copy.

    Links to our own click URLs are left out in both; give ``base_url`` to also recognise
    malformed ones exactly as `instrument` does.
    """
    base = base_url.rstrip("/") if base_url is not None else None
    _, plan, empty = _plan(html, text, base)
    return [] if empty else list(plan.links)


def _splice(source: str, edits: list[tuple[int, int, str]]) -> str:
    """Replace each (start, end) span of ``source``; spans never overlap."""
    if not edits:
        return source
    edits.sort()  # by start: spans neither overlap nor share a start
    parts: list[str] = []
    last = 0
    for start, end, replacement in edits:
        parts.append(source[last:start])
        parts.append(replacement)
        last = end
    parts.append(source[last:])
    return "".join(parts)


def instrument(
    *,
    html: str | None,
    text: str | None,
    copy_id: int,
    codec: TokenCodec,
    base_url: str,
    open_tracking: bool = True,
    link_tracking: bool = True,
) -> Instrumented:
    """Rewrite one copy's bodies for tracking; see the module docstring for the guarantees.

    Idempotent for a given copy: links already pointing at a click URL are not wrapped again
    and a pixel for this copy is not added twice. The opt-out marker ``data-mb-notrack`` is
    removed from link tags (it is an instruction to us, not for the recipient), so a marked
    link is left alone only by the first pass.
    """
    base = base_url.rstrip("/")
    scan, plan, empty = _plan(html, text, base)
    if empty:
        return Instrumented(html, text, [], False, False, True)

    html_edits: list[tuple[int, int, str]] = []
    text_edits: list[tuple[int, int, str]] = []
    if scan is not None and scan.markers:
        html_edits.extend((start, end, "") for start, end in scan.markers)
    escaped_base = _attribute_base(base)
    if link_tracking and plan.positions:
        minted: dict[str, str] = {}

        def token_for(url: str) -> str:
            token = minted.get(url)
            if token is None:
                token = minted[url] = codec.mint_click_token(copy_id, plan.positions[url], url)
            return token

        values: dict[tuple[str, str], str] = {}
        for site in plan.html_sites:
            # An unquoted value gets double quotes: a token URL may hold characters (from the
            # base URL) that an unquoted attribute value cannot.
            quote = site.quote or '"'
            value = values.get((site.url, quote))
            if value is None:
                value = f"{quote}{escaped_base}{CLICK_PATH}{token_for(site.url)}{quote}"
                values[site.url, quote] = value
            html_edits.append((site.start, site.end, value))
        if plan.text_urls:
            text_edits.extend(
                (found.start, found.end, f"{base}{CLICK_PATH}{token_for(found.url)}")
                for found in plan.text_urls
            )

    open_tracked = False
    if open_tracking and html is not None and scan is not None:
        token = codec.mint_open_token(copy_id)
        escaped = f"{escaped_base}{OPEN_PATH}{token}.gif"
        if not plan.has_open_path or (
            f"{base}{OPEN_PATH}{token}.gif" not in html and escaped not in html
        ):
            offset = scan.pixel_offset
            html_edits.append((offset, offset, f"{_PIXEL_START}{escaped}{_PIXEL_END}"))
            open_tracked = True

    links = list(plan.links) if link_tracking else []
    return Instrumented(
        _splice(html, html_edits) if html is not None else None,
        _splice(text, text_edits) if text is not None else None,
        links,
        open_tracked,
        bool(links),
        False,  # empty_body
        plan.over_limit if link_tracking else 0,
    )
