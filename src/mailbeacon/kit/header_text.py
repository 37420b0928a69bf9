"""Text that ends up in an email header (a subject, a display name): what it may hold,
and how it is written so that each header stays one field whatever reads it.

A header field is one logical line; folding (CRLF followed by white space) is the only
line break it may contain (RFC 5322 sections 2.2 and 2.2.3). Text beyond US-ASCII travels
as encoded words, ``=?charset?q?...?=`` (RFC 2047), which mail programs decode. An
encoded word can carry CR LF, and a decoder that writes the decoded text back out
(Python's email package before 3.11.10 and 3.12.5, CVE-2024-6923) turns it into headers
and a body of the author's choosing. So text with control characters or encoded-word
syntax is refused where people type it, and the encoded words that leave are the ones
this module makes from checked text, never ones someone else wrote.
"""

from __future__ import annotations

import re

# Control characters (C0, DEL, C1), the Unicode line and paragraph separators, and lone
# surrogates. Python's str.splitlines() breaks on \x0b \x0c \x1c-\x1e \x85 U+2028 U+2029
# besides CR and LF, and so may any program that reads the header as text.
_NOT_IN_HEADER = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_NOT_IN_BODY = re.compile("[\x00\ud800-\udfff]")
# The start of an encoded word (RFC 2047 section 2; RFC 2231 section 5 adds a language
# after "*" in the charset). Matching the opening alone is stricter than the full syntax,
# on purpose: some decoders are lenient about the end.
_ENCODED_WORD_START = re.compile(r"=\?[^?]*\?[bq]\?", re.IGNORECASE)

# RFC 2047 section 2: an encoded word is at most 75 characters, and a line holding one at
# most 76. Words of 60 leave room for "Subject: " or a folded line's leading space.
MAX_ENCODED_WORD = 60
_WORD_OPEN = "=?utf-8?q?"
_WORD_CLOSE = "?="
# RFC 2047 section 5 (3): the characters an encoded word in a phrase (a display name) may
# show as they are; the same set is valid in unstructured text (section 5 (1)), so one
# encoding serves subjects and names alike.
_Q_PLAIN = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789!*+-/")
# RFC 5322 section 3.2.3: atext, what an atom (an unquoted word of a phrase) is made of.
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+")
_PRINTABLE_ASCII = re.compile(r"[\x20-\x7e]*")
_MAX_PLAIN_WORD = 60


def _codepoint(ch: str) -> str:
    return f"U+{ord(ch):04X}"


def control_character_problem(value: str) -> str | None:
    """Why ``value`` cannot stand on one header line (a control character, a Unicode
    line or paragraph separator, a lone surrogate); None if it can."""
    found = _NOT_IN_HEADER.search(value)
    if found is None:
        return None
    ch = found.group(0)
    if _SURROGATE.fullmatch(ch):
        return _surrogate_reason(ch)
    return (
        "line breaks, tabs and other control characters cannot be used here "
        f"(found {_codepoint(ch)})"
    )


def header_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be a subject or a display name; None if it can.

    The reason reads after a field name ("subject: ...") or, capitalised, on its own.
    """
    problem = control_character_problem(value)
    if problem is not None:
        return problem
    if _ENCODED_WORD_START.search(value):
        return (
            "text of the form =?charset?q?...?= (an RFC 2047 encoded word) cannot be used "
            "here: write the text itself, it is encoded when the email is sent"
        )
    return None


def _surrogate_reason(ch: str) -> str:
    return (
        f"contains a broken character ({_codepoint(ch)}, half of a UTF-16 surrogate pair) "
        "that cannot be sent"
    )


def surrogate_problem(value: str) -> str | None:
    """Why ``value`` cannot be text at all (a lone surrogate, which no encoding can
    write: not UTF-8 for the database, nor an answer); None if it can."""
    found = _SURROGATE.search(value)
    return None if found is None else _surrogate_reason(found.group(0))


def body_text_problem(value: str) -> str | None:
    """Why ``value`` cannot be an email body; None if it can.

    A lone surrogate cannot be encoded at all, and NUL is the one character neither
    HTML nor plain text may carry in mail (RFC 5322 section 2.3 forbids it in a body,
    and the MIME encodings do not lift that). Other control characters are left to the
    author: a form feed or a tab is text.
    """
    found = _NOT_IN_BODY.search(value)
    if found is None:
        return None
    ch = found.group(0)
    if ch == "\x00":
        return "contains a NUL character (U+0000), which email cannot carry"
    return _surrogate_reason(ch)


def capitalised(reason: str) -> str:
    """A reason from this module as a sentence of its own."""
    return reason[:1].upper() + reason[1:] + "."


def encoded_words(text: str) -> list[str]:
    """``text`` as UTF-8 "Q" encoded words of at most :data:`MAX_ENCODED_WORD` characters.

    Each word holds whole characters (RFC 2047 section 5: a multi-octet character is never
    split between words), and readers join adjacent encoded words without the white space
    between them (section 6.2), so the words may be folded anywhere between them.
    """
    room = MAX_ENCODED_WORD - len(_WORD_OPEN) - len(_WORD_CLOSE)
    words: list[str] = []
    current: list[str] = []
    used = 0
    for ch in text:
        if ch in _Q_PLAIN:
            piece = ch
        elif ch == " ":
            piece = "_"
        else:
            piece = "".join(f"={octet:02X}" for octet in ch.encode("utf-8"))
        if used + len(piece) > room and current:
            words.append(_WORD_OPEN + "".join(current) + _WORD_CLOSE)
            current, used = [], 0
        current.append(piece)
        used += len(piece)
    if current:
        words.append(_WORD_OPEN + "".join(current) + _WORD_CLOSE)
    return words


def _plain_words(text: str) -> list[str] | None:
    """The words of ``text`` split at single spaces, if it can be written as it is."""
    if not _PRINTABLE_ASCII.fullmatch(text) or "=?" in text:
        return None
    words = text.split(" ")
    if any(len(w) > _MAX_PLAIN_WORD for w in words):
        return None  # a word too long to fold: encoded words can be cut anywhere
    return words


def unstructured_words(text: str) -> list[str]:
    """An unstructured value (a subject) as words to be joined by single spaces, each
    of which a fold may replace (RFC 5322 section 3.2.5; section 2.2.3 for folding).

    Printable ASCII with short words is written as it is, every space kept; anything
    else becomes encoded words. The caller has checked ``text`` with
    :func:`header_text_problem`.
    """
    words = _plain_words(text)
    return words if words is not None else encoded_words(text)


def phrase_words(name: str) -> list[str]:
    """A display name as the words of an RFC 5322 phrase (section 3.2.5): atoms as
    they are, other printable ASCII as one quoted string, anything else encoded words.
    The caller has checked ``name`` with :func:`header_text_problem`."""
    words = _plain_words(name)
    if words is not None:
        if all(_ATOM.fullmatch(w) for w in words):
            return words
        quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if len(quoted) <= MAX_ENCODED_WORD:
            return [quoted]
    return encoded_words(name)
