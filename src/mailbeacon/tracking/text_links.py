"""Find the web addresses in a plain-text body, with the edges a mail client's linkifier sees.

A URL in running text is followed by punctuation, wrapped in brackets, or closed by ``>``
in the ``<https://...>`` form of RFC 3986 appendix C. The rules follow what GitHub's
autolinker (GFM, "extended autolinks") and the common mail clients do: trailing sentence
punctuation is not part of the address, and a closing bracket is part of it only while it
balances an opening one inside the address, so ``(see https://x.com/a_(b))`` yields
``https://x.com/a_(b)``.
"""

from __future__ import annotations

import re
from typing import NamedTuple

__all__ = ["TextUrl", "find_text_urls"]

# An address starts at a word boundary (not inside "xhttp://" or "user@http://") and runs to
# whitespace or a character that never appears unescaped in one: <, >, ", control characters.
_URL = re.compile(r"""(?<![\w@.+\-])https?://[^\s<>"\x00-\x1f\x7f]+""", re.IGNORECASE)
_TRAILING = frozenset(".,;:!?'*~")
_CLOSING = {")": "(", "]": "[", "}": "{"}


class TextUrl(NamedTuple):
    """One web address in plain text: its span and the address itself."""

    start: int
    end: int
    url: str


def _trim(url: str) -> str:
    """Drop trailing punctuation and unbalanced closing brackets, in any interleaving."""
    while url:
        last = url[-1]
        unbalanced = last in _CLOSING and url.count(last) > url.count(_CLOSING[last])
        if last not in _TRAILING and not unbalanced:
            break
        url = url[:-1]
    return url


def find_text_urls(text: str) -> list[TextUrl]:
    """Every http(s) address in ``text``, in order, trimmed to what a reader means."""
    found: list[TextUrl] = []
    for m in _URL.finditer(text):
        url = _trim(m.group())
        if url:
            found.append(TextUrl(m.start(), m.start() + len(url), url))
    return found
