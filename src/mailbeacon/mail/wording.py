"""How the pages put an event's judgement into words.

Only enums decide: the label and the kind of hit. The reason stored with the
event (which proxy, which scanner, why) is shown beside these words as it is.
"""

from __future__ import annotations

from mailbeacon.models import EventKind, EventLabel

_OPEN_WORDS = {
    EventLabel.HUMAN: "opened",
    EventLabel.IMAGE_PROXY: "opened via an image proxy",
    EventLabel.APPLE_MPP: "Apple Mail privacy fetch, open not confirmed",
    EventLabel.SCANNER: "security scanner",
    EventLabel.SELF: "your own view",
    EventLabel.LINK_PREVIEW: "link preview",
    EventLabel.PREFETCH: "prefetch, before anyone read it",
    EventLabel.TOO_FAST: "machine: too soon after sending",
    EventLabel.BURST: "machine: several links at once",
    EventLabel.DUPLICATE: "repeat of the hit before",
}
_CLICK_WORDS = {
    **_OPEN_WORDS,
    EventLabel.HUMAN: "clicked",
    EventLabel.IMAGE_PROXY: "clicked via an image proxy",
    EventLabel.SELF: "your own click",
}


def judged(kind: EventKind, label: EventLabel) -> str:
    """How an event was judged, in the words the pages use."""
    words = _OPEN_WORDS if kind == EventKind.OPEN else _CLICK_WORDS
    return words[label]
