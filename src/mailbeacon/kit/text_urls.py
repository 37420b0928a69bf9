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

__all__ = ["DROPPABLE", "TextUrl", "find_text_urls", "is_text_url", "trim_text_url"]

# An address starts at a word boundary (not inside "xhttp://" or "user@http://") and runs to
# whitespace or a character that never appears unescaped in one: <, >, ", control characters.
_URL = re.compile(r"""(?<![\w@.+\-])https?://[^\s<>"\x00-\x1f\x7f]+""", re.IGNORECASE)
_TRAILING = frozenset(".,;:!?'*~")
_CLOSING = {")": "(", "]": "[", "}": "{"}
DROPPABLE = "".join(_TRAILING) + "".join(_CLOSING)  # what may be trimmed off the end


class TextUrl(NamedTuple):
    """One web address in plain text: its span and the address itself."""

    start: int
    end: int
    url: str


def trim_text_url(url: str) -> str:
    """Drop trailing punctuation and unbalanced closing brackets, in any interleaving.

    Read from the end one character at a time, a closing bracket is dropped while the
    address so far holds more of it than of its opening bracket. Done that way, an address
    ending in a million ")" costs a million steps; done in bulk here, it costs a few
    ``count`` calls. The run of droppable characters at the end holds no opening bracket,
    so a closing one there stays exactly when it is among the first ``unmatched`` of its
    kind in the run, ``unmatched`` being how many openings before the run lack a closing.
    The address ends after the last such bracket, or where the run starts.
    """
    run = len(url.rstrip(DROPPABLE))
    if run == len(url):
        return url
    end = run
    for closing, opening in _CLOSING.items():
        unmatched = url.count(opening, 0, run) - url.count(closing, 0, run)
        if unmatched <= 0:
            continue
        in_run = url.count(closing, run)
        if in_run == 0:
            continue
        if in_run <= unmatched:
            kept = url.rindex(closing, run)  # every one in the run stays
        else:
            kept = run - 1
            for _ in range(unmatched):
                kept = url.index(closing, kept + 1)
        end = max(end, kept + 1)
    return url[:end]


def find_text_urls(text: str, limit: int | None = None) -> list[TextUrl]:
    """Every http(s) address in ``text``, in order, trimmed to what a reader means; only
    the first ``limit`` of them if given."""
    found: list[TextUrl] = []
    for m in _URL.finditer(text):
        url = trim_text_url(m.group())
        if url:
            found.append(TextUrl(m.start(), m.start() + len(url), url))
            if len(found) == limit:
                break
    return found


def is_text_url(candidate: str) -> bool:
    """Whether ``candidate`` standing alone in text is read as exactly one address, itself."""
    return _URL.fullmatch(candidate) is not None and trim_text_url(candidate) == candidate
