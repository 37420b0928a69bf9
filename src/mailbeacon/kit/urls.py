"""Web addresses read the way a browser reads them (the WHATWG URL Standard).

A browser does not read an ``href`` with the rules of RFC 3986, which ``urllib.parse``
follows. The URL Standard's basic URL parser (section 4.4) drops leading and trailing C0
controls and spaces and every tab and newline, reads a backslash as a slash in http(s)
addresses (so ``https://good.example\\@evil.example/`` opens good.example, whose path is
``/@evil.example/``), splits the userinfo off at the last ``@``, maps the host through
IDNA (UTS #46) and IPv4 number forms, and percent-encodes what each component needs.
Anything that judges or reproduces a destination must read it the same way, or a redirect
can land somewhere the original link never pointed.

The parsing is ada's (the conformant parser behind Node.js's ``URL``, checked against the
web-platform tests), through its Python binding. The serialisation (section 4.5) is plain
printable ASCII and parses back to the very same URL record, so it is what goes into a
``Location`` header.
"""

from __future__ import annotations

import re

from ada_url import check_url, normalize_url

__all__ = ["is_web_destination", "normalise_url", "web_destination"]

_URL_STRIP = "".join(chr(c) for c in range(0x21))
_URL_TAB_NEWLINE = str.maketrans("", "", "\t\n\r")
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_WEB_SCHEME = re.compile("https?://", re.IGNORECASE)
# What a serialised http(s) URL may hold: printable ASCII without the space (section 4.5,
# every component is percent-encoded with a set that includes C0 controls, the space and
# all non-ASCII code points).
_SERIALISED = re.compile("[\x21-\x7e]*+")


def normalise_url(url: str) -> str:
    """Remove outer C0 controls and spaces, and tabs and newlines anywhere.

    This is the URL parser's own first step (basic URL parser, steps 1-3), applied to an
    ``href`` before it is judged or sealed.
    """
    url = url.strip(_URL_STRIP)
    if "\t" in url or "\n" in url or "\r" in url:  # rare: translate is the slow part
        url = url.translate(_URL_TAB_NEWLINE)
    return url


def web_destination(url: str) -> str | None:
    """The serialised http(s) URL a browser opens for the absolute address ``url``, or None.

    None when the parser fails (no host, a bad port, a host that IDNA or IPv6 rules refuse,
    a forbidden host code point, ...), when the scheme is not http or https, and when the
    address holds any C0 control character or DEL. The parser would drop tabs and newlines,
    but they are removed before a destination is sealed, as the parser's first step does:
    one that is still there was not sealed by us and is not followed.
    """
    if _CONTROL.search(url) is not None:
        return None
    try:
        href = normalize_url(url)
    except ValueError:  # ada refuses the input, or it holds a lone surrogate
        return None
    if not href.startswith(("http://", "https://")) or _SERIALISED.fullmatch(href) is None:
        return None
    return href


def is_web_destination(url: str) -> bool:
    """Whether `web_destination` accepts ``url``, without serialising it (twice as fast).

    Only for an address that starts with "http://" or "https://" as written; others are
    refused here, whatever the parser would make of them.
    """
    if _WEB_SCHEME.match(url) is None or _CONTROL.search(url) is not None:
        return False
    return check_url(url)  # the scheme is http(s): every parse serialises as one
