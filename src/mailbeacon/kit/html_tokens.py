"""Split HTML into text, start tags and end tags, in linear time, as the HTML tokenizer does.

For readers that want what a document says (its text, and a few attributes such as a link's
``href``), not where things are. The standard library's ``html.parser`` cannot be given
hostile input: for every ``<`` that opens a tag left unfinished it scans the rest of the
input again, so 180 KB of ``<a href="`` take it ~40 s (CPython gh-135462, fixed only in
later releases than ours). Here one regular expression, whose quantifiers are all
possessive, matches each construct once, so no character is read more than a constant
number of times; tags the caller does not ask for, comments and doctypes are passed over
inside the regex engine, in runs, without a round trip through Python each.

The grammar is that of the tokenizer of the HTML Living Standard (section 13.2.5): where a
tag ends (a quoted attribute value may hold ``>``), comments (``<!-->`` is one, and one left
open runs to the end), bogus comments (``<!x>``, ``<?x>``, ``</1>``), a ``<`` that starts
nothing being text, an unfinished tag at the end of input being dropped with everything
after it ("eof-in-tag"), and the elements whose content is text up to their own end tag:
RAWTEXT (``script``, ``style``, ...) as is, RCDATA (``title``, ``textarea``) with character
references decoded, and ``plaintext`` to the end. Character references are decoded with the
tokenizer's rules for text and, in attribute values, for attributes (13.2.5.72-80). Not
modelled, as in the link scanner: foreign content (SVG, MathML) and the script-data escape
states.
"""

from __future__ import annotations

import functools
import html as html_lib
import re
from collections.abc import Callable, Iterator
from html.entities import html5 as _HTML5_ENTITIES
from typing import Final

__all__ = [
    "END",
    "REST",
    "START",
    "TEXT",
    "attributes",
    "decode_attribute",
    "decode_text",
    "html_tokens",
    "strip_markup",
]

TEXT: Final = 0  # (TEXT, "", decoded text)
START: Final = 1  # (START, lower-case name, the attributes as written: see `attributes`)
END: Final = 2  # (END, lower-case name, "")
REST: Final = 3  # (REST, "", the rest of the document as written): past the tag limit

RAWTEXT: Final = frozenset({"script", "style", "xmp", "iframe", "noembed", "noframes", "noscript"})
RCDATA: Final = frozenset({"title", "textarea"})


def _ci(word: str) -> str:
    """A regex matching ``word`` in any ASCII case (cheaper in sre than an IGNORECASE group)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _other_name(words: frozenset[str]) -> str:
    """The first letter of a tag name that is none of ``words``. Dispatching on that letter
    first (one class for the letters no word starts with, a look-ahead per other letter)
    keeps a tag from being tried against every word in turn."""
    rests: dict[str, list[str]] = {}
    for word in words:
        rests.setdefault(word[0], []).append(_ci(word[1:]) + r"(?=[\t\n\f\r />])")
    plain = "".join(c + c.upper() for c in "abcdefghijklmnopqrstuvwxyz" if c not in rests)
    special = [f"{_ci(c)}(?!{'|'.join(r)})" for c, r in sorted(rests.items())]
    return "(?:" + "|".join([f"[{plain}]", *special]) + ")"


# The attribute states of the tokenizer, exactly, up to the ">" that ends the tag; a quoted
# value may run to the end of input, and then the tag does not end at all.
_VALUE = r"""(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z)|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>)|\Z)"""
_ATTRS = (
    r"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rf"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+{_VALUE})?+)*+"
)
_COMMENT_TEXT = r"[^-]*+(?:-(?!-!?>)[^-]*+)*+"  # up to the "--" that "-->" or "--!>" closes
_NAME_REST = r"[^\t\n\f\r />]*+"


@functools.lru_cache(maxsize=8)
def _pattern(names: frozenset[str]) -> re.Pattern[str]:
    wanted = names | RAWTEXT | RCDATA | {"plaintext"}
    # Comments, doctypes, processing instructions and the tags nobody asked for.
    ignored = rf"""
        <!--(?:-?>|{_COMMENT_TEXT}(?:--!?>|\Z))
      | <(?:!|\?|/(?![a-zA-Z]))[^>]*+>?
      | <{_other_name(wanted)}{_NAME_REST}{_ATTRS}>
      | </{_other_name(frozenset(names))}{_NAME_REST}{_ATTRS}>"""
    return re.compile(
        rf"""
          (?P<text>(?:[^<]++|<(?![a-zA-Z!/?]))++)
        | (?:{ignored})++
        | (?P<tag><(?P<slash>/?)(?P<name>[a-zA-Z]{_NAME_REST})(?P<attrs>{_ATTRS})>)
          (?P<again>(?:[\t\n\f\r ]*+(?P=tag))*+)
        | (?P<unfinished></?[a-zA-Z])
        """,
        re.VERBOSE,
    )


def html_tokens(
    html: str, names: frozenset[str], max_steps: int | None = None
) -> Iterator[tuple[int, str, str, int]]:
    """The document's text runs (decoded), and its start and end tags named in ``names``,
    as (kind, name, value, times).

    After ``max_steps`` constructs read (a text run, a tag, or a run of what yields
    nothing), what is left of the document comes as one REST token, unread: each step is a
    trip through Python, and a caller that must bound its work on hostile input can read
    the rest more cheaply (see `strip_markup`).

    ``times`` counts a tag repeated verbatim with nothing but spaces between
    (``<div> <div> <div>``): deep nesting comes as one token. The text of
    RAWTEXT and RCDATA elements comes as one TEXT token after their START token (their
    END token is reported only if its name is in ``names``). Other tags, comments, doctypes
    and processing instructions yield nothing. Adjacent text may come in pieces.
    """
    pattern = _pattern(names)
    pos, size = 0, len(html)
    left = max_steps if max_steps is not None else size + 1
    while pos < size:
        matches = pattern.finditer(html, pos)
        pos = size
        for m in matches:
            left -= 1
            if left < 0:
                yield REST, "", html[m.start() :], 1
                return
            kind = m.lastgroup
            if kind == "text":
                yield TEXT, "", decode_text(m.group("text")), 1
            elif kind == "again":
                name = m.group("name").lower()
                if m.group("slash"):
                    if name in names:
                        yield END, name, "", _times(m)
                elif name in RAWTEXT or name in RCDATA or name == "plaintext":
                    if name in names:
                        yield START, name, "", 1
                    begin = m.end("tag")
                    closing = None
                    if name != "plaintext":
                        closing = _CONTENT_END[name].search(html, begin)
                    pos = closing.start() if closing is not None else size
                    if pos > begin:
                        content = html[begin:pos]
                        yield TEXT, "", decode_text(content) if name in RCDATA else content, 1
                    break  # read on after the content
                elif name in names:
                    yield START, name, m.group("attrs"), _times(m)
            elif kind == "unfinished":
                return  # a tag still open at the end of input is dropped, and all after it


def _spaces(text: str) -> int:
    return sum(map(text.count, "\t\n\f\r "))


def _times(m: re.Match[str]) -> int:
    """How many times the tag came: once, plus each copy in ``again``, which holds copies
    of it and spaces between them. Spaces inside the copies are counted too, so the
    number of copies is what is left without any spaces over the tag's size without."""
    again = m.group("again")
    if not again:
        return 1
    tag = m.group("tag")
    return 1 + (len(again) - _spaces(again)) // (len(tag) - _spaces(tag))


_CONTENT_END = {name: re.compile(rf"</{_ci(name)}[\t\n\f\r />]") for name in RAWTEXT | RCDATA}

# Everything in a document that is not text, for removal in one pass inside the regex
# engine: the content of RAWTEXT elements with them (RCDATA content is text), and an
# unfinished tag with everything after it.
_MARKUP = re.compile(
    rf"""
      </?{_other_name(RAWTEXT | {"plaintext"})}{_NAME_REST}{_ATTRS}>
    | <(?P<raw>{"|".join(_ci(name) for name in sorted(RAWTEXT))})(?=[\t\n\f\r />]){_ATTRS}>
        [^<]*+(?:<(?!/(?i:(?P=raw))[\t\n\f\r />])[^<]*+)*+
    | </?[a-zA-Z]{_NAME_REST}{_ATTRS}>
    | <!--(?:-?>|{_COMMENT_TEXT}(?:--!?>|\Z))
    | <(?:!|\?|/(?![a-zA-Z]))[^>]*+>?
    | </?[a-zA-Z](?s:.*+)
    """,
    re.VERBOSE,
)


def strip_markup(html: str) -> str:
    """The text of a piece of a document, decoded, with a space for each tag, comment or
    script: what a reader sees, without any layout. Linear, and no Python per tag.

    A ``plaintext`` start tag is dropped and what follows it read as markup as well.
    """
    return decode_text(_MARKUP.sub(" ", html))


_ATTR = re.compile(
    r"""[\t\n\f\r /]*+(?P<name>[^\t\n\f\r />][^\t\n\f\r />=]*+)"""
    r"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"""
    r"""(?:"(?P<dq>[^"]*+)"?|'(?P<sq>[^']*+)'?|(?P<bare>[^\t\n\f\r >"'][^\t\n\f\r >]*+))?)?+"""
)


def attributes(written: str) -> dict[str, str]:
    """The attributes of a START token by lower-case name, values decoded; as in the
    tokenizer, the first of duplicate names wins and a bare name has the value ""."""
    found: dict[str, str] = {}
    for a in _ATTR.finditer(written):
        name = a.group("name").lower()
        if name not in found:
            value = a.group("dq")
            if value is None:
                value = a.group("sq")
                if value is None:
                    value = a.group("bare") or ""
            found[name] = decode_attribute(value)
    return found


# html.unescape's reference grammar; what differs inside attributes is decided per match.
_LEGACY_MAX = max(len(name) for name in _HTML5_ENTITIES if not name.endswith(";"))
_CHARREF = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_NUMERIC = re.compile(r"&#(?:[xX](?P<hex>[0-9a-fA-F]+)|(?P<dec>[0-9]+));?")
# The replacements of the numeric character reference end state (HTML 13.2.5.80): NUL and
# the C1 controls that windows-1252 gives a meaning to.
_NUMERIC_REPLACED: dict[int, str] = {
    0x00: "\ufffd", 0x80: "\u20ac", 0x82: "\u201a", 0x83: "\u0192", 0x84: "\u201e",
    0x85: "\u2026", 0x86: "\u2020", 0x87: "\u2021", 0x88: "\u02c6", 0x89: "\u2030",
    0x8A: "\u0160", 0x8B: "\u2039", 0x8C: "\u0152", 0x8E: "\u017d", 0x91: "\u2018",
    0x92: "\u2019", 0x93: "\u201c", 0x94: "\u201d", 0x95: "\u2022", 0x96: "\u2013",
    0x97: "\u2014", 0x98: "\u02dc", 0x99: "\u2122", 0x9A: "\u0161", 0x9B: "\u203a",
    0x9C: "\u0153", 0x9E: "\u017e", 0x9F: "\u0178",
}  # fmt: skip


def _numeric_reference(m: re.Match[str]) -> str:
    """The character a numeric reference stands for, as the tokenizer decides it.

    Not ``html.unescape``: it drops the controls and noncharacters that the tokenizer keeps
    (``&#1;`` in an href is a %01 in the URL a browser opens), and it raises ValueError on
    a reference of more than 4,300 decimal digits (Python's limit on int()).
    """
    digits, base = (m.group("hex"), 16) if m.group("hex") is not None else (m.group("dec"), 10)
    digits = digits.lstrip("0")
    if len(digits) > 8:
        return "\ufffd"  # far beyond U+10FFFF in either base
    number = int(digits or "0", base)
    if number in _NUMERIC_REPLACED:
        return _NUMERIC_REPLACED[number]
    if number > 0x10FFFF or 0xD800 <= number <= 0xDFFF:
        return "\ufffd"
    return chr(number)


def _decode_attribute_ref(m: re.Match[str]) -> str:
    ref = m.group(1)
    if ref[0] == "#":
        numeric = _NUMERIC.match(m.group(0))
        assert numeric is not None  # the same grammar
        return _numeric_reference(numeric)
    if ref in _HTML5_ENTITIES:
        return _HTML5_ENTITIES[ref]  # what html.unescape returns for it
    # Only the legacy names (none longer than six letters) are recognised without ";".
    for size in range(min(len(ref) - 1, _LEGACY_MAX), 1, -1):
        if ref[:size] in _HTML5_ENTITIES:
            after = ref[size]
            # In an attribute, a legacy reference without ";" that runs into a letter, digit
            # or "=" stays literal, so `?a=1&copy=2` keeps its "&copy" (HTML 13.2.5.73).
            if after == "=" or (after.isascii() and after.isalnum()):
                return m.group(0)
            return _HTML5_ENTITIES[ref[:size]] + ref[size:]
    return m.group(0)


def _decode_pieces(value: str, decode_one: Callable[[str], str]) -> str:
    """Decode ``value`` one "&" at a time, each distinct piece once.

    A reference never holds a second "&", so the text after each "&" decodes on its own.
    Splitting there and remembering each distinct piece keeps hostile input (a million
    ``&a``) from costing a Python call per reference, as ``re.sub`` with a function would.
    """
    pieces = value.split("&")
    decoded = {piece: decode_one("&" + piece) for piece in set(pieces[1:])}
    if all(after[1:] == piece for piece, after in decoded.items()):
        return value  # no reference at all, only "&"s
    return pieces[0] + "".join(map(decoded.__getitem__, pieces[1:]))


def _decode_one_in_attribute(piece: str) -> str:
    return _CHARREF.sub(_decode_attribute_ref, piece, count=1)


def decode_attribute(value: str) -> str:
    """Decode the character references of an attribute value as the HTML tokenizer does."""
    if "&" not in value:
        return value
    # A query string's "&amp;" is nearly always the only reference in a link: it always
    # decodes to "&" (no reference name runs on past ";"), and what stands on either side
    # of it decodes as if it were alone, so it needs no trip through Python per piece.
    if "&" not in value.replace("&amp;", ""):
        return value.replace("&amp;", "&")
    return _decode_pieces(value, _decode_one_in_attribute)


def _decode_one_in_text(piece: str) -> str:
    numeric = _NUMERIC.match(piece)
    if numeric is not None:
        return _numeric_reference(numeric) + piece[numeric.end() :]
    return html_lib.unescape(piece)  # named references: the same rules as text


def decode_text(text: str) -> str:
    """Decode the character references of text outside tags as the HTML tokenizer does."""
    if "&" not in text:
        return text
    return _decode_pieces(text, _decode_one_in_text)
