"""Find the web links of an HTML email, and where a pixel may go, without re-serialising it.

An email must reach its recipient exactly as its sender wrote it: a parser that builds a
tree and prints it again changes quoting, entities, conditional comments and whitespace, and
Outlook's Word engine notices. So this module only *locates* things and reports offsets; the
caller splices new values into the original string and leaves every other character alone.

The scanner is a pair of regular expressions that follow the tokenizer of the HTML Living
Standard (section 13.2.5) as far as structure goes: where a tag ends (a quoted attribute value
may hold ``>`` or ``<``), which attribute is ``href`` (the first of duplicate names wins), what
a comment is, and that ``script``, ``style``, ``textarea``, ``title`` and the other raw-text
elements hold text, not tags. Ordinary tags, and short raw-text elements with their content,
are passed over inside the regex engine, so Python only sees the constructs that matter: link
tags, comments that Outlook reads (``<!--[if mso]> ... <![endif]-->``) where they hold a link
tag, ``</body>``, long style sheets and scripts (whose end str.find reaches faster), and a
raw-text element or an image where visible content is looked for, or one left open to the
end. Each of those is a step through Python, which costs about as much as sre passing over ten
ordinary tags, so the fast alternatives pass over whatever cannot matter. Before the exact
grammar, cheaper alternatives read the common shapes (lower-case names, double-quoted
values); the tests hold the scan to the one without them.

Known simplifications, all outside what email HTML contains: SVG and MathML foreign content
(where ``<style>`` is not raw text and ``<![CDATA[`` is a section) is read as HTML, and the
script-data escape states (``<!--`` inside ``<script>``) are not modelled.
"""

from __future__ import annotations

import functools
import re
import string
from typing import NamedTuple

from mailbeacon.kit.html_tokens import decode_attribute, decode_text
from mailbeacon.kit.urls import normalise_url

__all__ = [
    "INVISIBLE_CHARS",
    "MAX_LINK_SITES",
    "NOTRACK_ATTRIBUTE",
    "HtmlScan",
    "LinkSite",
    "anchor_text",
    "decode_attribute",
    "normalise_url",
    "scan_html",
]

NOTRACK_ATTRIBUTE = "data-mb-notrack"
# Link tags read from one document; any after them are passed over like other tags (and so
# left as written). Each costs a trip through Python, and an email has dozens to hundreds:
# the cap keeps a body of a hundred thousand link tags from costing seconds.
MAX_LINK_SITES = 10_000


def _ci(word: str) -> str:
    """A regex matching ``word`` in any ASCII case (cheaper in sre than an IGNORECASE group)."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


_DELIM = r"[\t\n\f\r />]"  # what ends a tag name
_NAME_END = rf"(?={_DELIM})"


def _names(*words: str) -> str:
    """Any of ``words`` as a whole tag name, in any case."""
    return "(?:" + "|".join(_ci(w) for w in sorted(words, key=len, reverse=True)) + ")" + _NAME_END


def _class_chars(c: str) -> str:
    """``c`` in any ASCII case, for a character class."""
    return c.lower() + c.upper() if c.isalpha() else re.escape(c)


def _other_starts(words: tuple[str, ...], prefix: str) -> list[str]:
    """Alternatives that together match the start of any tag name that is none of ``words``
    and does not start with ``prefix``: its first character or two, `_TAIL` reading the rest.

    The scanner makes each an alternative of its own, next to the other constructs: sre tries
    an alternative only if its first character fits, while a nested group of alternatives
    costs as much as a short tag. A letter that starts no special name settles it at once;
    so does a second character that continues none (``td``, ``tr``, ``span``, ``table``);
    only the rest (``p``, ``template``) take a look-ahead.
    """
    rests: dict[str, list[str]] = {}
    seconds: dict[str, str] = {}
    for word in (*words, prefix):
        end = _NAME_END if word != prefix else ""
        rests.setdefault(word[0], []).append(_ci(word[1:]) + end if word[1:] else _DELIM)
        second = word[1:2]
        if second and second not in seconds.get(word[0], ""):
            seconds[word[0]] = seconds.get(word[0], "") + second
    plain = "".join(c + c.upper() for c in string.ascii_lowercase if c not in rests)
    # The second character may be neither a quote nor "=": `_TAIL` reads those in a name.
    fast = [
        f"{_ci(c)}[^{''.join(_class_chars(x) for x in seconds.get(c, ''))}"
        r"""\t\n\f\r />"'=]"""
        for c in rests
    ]
    slow = [f"{_ci(c)}(?!{'|'.join(r)})" for c, r in rests.items()]
    return [f"[{plain}]", *fast, *slow]


# The attribute grammar of the tokenizer's attribute states, exactly. Every quantifier is
# possessive, so a quote left open until the end of input fails the whole tag instead of
# being re-read as something else: the tokenizer then drops the tag ("eof-in-tag"), and the
# scan stops there too.
_VALUE = r"""(?:"[^"]*+(?:"|\Z)|'[^']*+(?:'|\Z)|[^\t\n\f\r >"'][^\t\n\f\r >]*+|(?=>)|\Z)"""
_EXACT_ATTRS = (
    r"(?:[\t\n\f\r /]++|[^\t\n\f\r />][^\t\n\f\r />=]*+"
    rf"(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+{_VALUE})?+)*+>"
)
# A faster reading of well-formed attributes, tried first: long runs between quoted values.
# It only accepts what the tokenizer would end at the same ">": a quote only opens a value
# right after `name=`, and an unquoted value holds no quote or "=". Anything else (`a= "x"`,
# `a=b="c"`, `"x"="y"`, a quote inside a name) falls through to the exact grammar.
_FAST_ATTRS = (
    r"""[^"'>=]*+(?:(?:="(?<=[^\t\n\f\r /="'<>]=")[^"]*+"|='(?<=[^\t\n\f\r /="'<>]=')[^']*+'"""
    r"""|=[^"'>=\t\n\f\r ]++(?=[\t\n\f\r >])|=(?=>))[^"'>=]*+)*+>"""
)
# From the second character of a tag name to the end of the tag. Both readings end at the
# same ">", so the group need not be atomic where nothing after it can fail (sre pays for an
# atomic group on every tag); `_raw_element` makes it so, as a look-ahead follows there.
_TAIL = (
    rf"""(?:[^\t\n\f\r />"'=]*+(?:>|[\t\n\f\r /]{_FAST_ATTRS})"""
    rf"|[^\t\n\f\r />]*+{_EXACT_ATTRS})"
)

# Elements whose content the tokenizer reads as text up to their own end tag.
_RAW_TEXT = ("script", "style", "textarea", "title", "xmp", "iframe", "noembed", "noframes")
_LINK_TAGS = ("a", "area")
_LONG_RAW = ("style", "script")
# What is visible content on its own, without any text around it.
_VISIBLE_TAGS = (
    "img", "image", "svg", "video", "audio", "picture", "canvas", "iframe", "object",
    "embed", "input", "button", "select", "textarea", "hr", "meter", "progress", "xmp",
)  # fmt: skip

# Characters that show nothing on their own (spaces, joiners, direction marks, the byte-order
# mark): preheader padding is made of them. Written for a regex character class.
INVISIBLE_CHARS = (
    r"\x00\s\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180e\u200b-\u200f\u202a-\u202e"
    r"\u2060-\u2064\u3164\ufeff\uffa0"
)
_INVISIBLE_ENTITY = (
    r"&(?:nbsp;?|shy;?|(?:zwnj|zwj|lrm|rlm|ensp|emsp|emsp13|emsp14|thinsp|hairsp|numsp"
    r"|puncsp|ZeroWidthSpace|NoBreak|MediumSpace|ThinSpace|VeryThinSpace|NonBreakingSpace);"
    r"|\#0*(?:9|1[023]|32|160|173|847|819[2-9]|820[0-7]|8239|8287|8288|12288|65279)(?![0-9]);?"
    r"|\#[xX]0*(?:9|[aAcCdD]|20|[aA]0|[aA][dD]|34[fF]|20[0-9a-fA-F]|202[fF]|205[fF]|2060"
    r"|3000|[fF][eE][fF][fF])(?![0-9a-fA-F]);?)"
)


# A comment's text: up to the first "--" that "-->" or "--!>" closes (unrolled: sre is slow
# at lazy repetition).
_COMMENT_TEXT = r"[^-]*+(?:-(?!-!?>)[^-]*+)*+"

# A link tag that cannot lead to the web is passed over without asking Python: its first
# attribute is an href that starts with neither "h" nor a character reference (`#`, empty,
# `mailto:`, a merge tag) or is a bare "http://". Its values may not hold "<" or ">", so its
# first ">" ends it, and a look-ahead up to there rules out the opt-out marker, which would
# have to be removed. Any other link tag is reported and read attribute by attribute.
_NO_MARKER = rf"(?=[^<>dD]*+(?:[dD](?!{_ci(NOTRACK_ATTRIBUTE[1:])})[^<>dD]*+)*+>)"
# Attributes whose values hold no "<" or ">" (the fast grammar otherwise), up to the ">".
_PLAIN_ATTRS = r"""[^"'<>=]*+(?:(?:=(?<=[^\t\n\f\r /="'<>]=)(?:"[^"<>]*+"|'[^'<>]*+')
      |=[^"'<>=\t\n\f\r ]++(?=[\t\n\f\r >])|=(?=>))[^"'<>=]*+)*+>"""
# (The marker's look-ahead comes after "href=", which holds no "d", so that a tag whose
# first attribute is something else fails before it reads the whole tag.)
_PLAIN_LINK_ATTRS = rf"""
    [\t\n\f\r /]++[hH][rR][eE][fF]={_NO_MARKER}
    (?:"(?:[^hH&<>\x00-\x20"][^"<>]*+)?"|'(?:[^hH&<>\x00-\x20'][^'<>]*+)?'
      |"[hH][tT][tT][pP][sS]?://"|'[hH][tT][tT][pP][sS]?://'
      |[hH][tT][tT][pP][sS]?://(?=[\t\n\f\r >])
      |[^hH&<>\x00-\x20"'=][^\t\n\f\r <>"'=]*+(?=[\t\n\f\r >]))
    {_PLAIN_ATTRS}"""
_PLAIN_LINK = f"{_names(*_LINK_TAGS)}{_PLAIN_LINK_ATTRS}"
# The fast scanner tries it only where the first attribute is no href that fails it below:
# it reads the whole tag once more. The guard comes after the first letter: sre passes
# over an alternative that opens with a character or a set when the character at hand does
# not fit, and enters any other (some 150 instructions) on every construct that falls
# through to the exact grammar.
_PLAIN_LINK_UNLESS_WEB = (
    r"""[aA](?!(?<=a)\x20href="(?![hH][tT][tT][pP][sS]?://")[hH&\x00-\x20])"""
    rf"""(?:[rR][eE][aA])?{_NAME_END}{_PLAIN_LINK_ATTRS}"""
)
# A VML element without any "href" in it (a fill, a text box), passed over likewise.
_PLAIN_VML_ATTRS = rf"""
    [^\t\n\f\r />"'<=]*+(?=[\t\n\f\r />]){_NO_MARKER}
    (?=[^<>hH]*+(?:[hH](?![rR][eE][fF])[^<>hH]*+)*+>){_PLAIN_ATTRS}"""
_PLAIN_VML = f"{_ci('v:')}{_PLAIN_VML_ATTRS}"


def _raw_element(name: str) -> str:
    """A raw-text element whose end tag follows somewhere: its start tag and its content, up
    to that end tag. Without an end tag it fails (having read to the end of input once), and
    the step reports it, so that the scan can stop there."""
    end = rf"/{_ci(name)}{_DELIM}"
    return rf"{_ci(name)}{_NAME_END}(?>{_TAIL})[^<]*+(?:<(?!{end})[^<]*+)*+(?=<{end})"


# A style sheet or script of up to this many characters, none of them "<", is passed over
# inside the regex engine: a step through Python costs as much as sre reading some 4,000
# characters of it. Longer ones, and those that hold "<", are reported (see `_scanner`).
SHORT_RAW_CHARS = 4000


def _short_raw(name: str) -> str:
    """A short raw-text element in lower case, start tag, content and the end tag's start."""
    return rf"{name}{_NAME_END}(?>{_TAIL})[^<]{{0,{SHORT_RAW_CHARS}}}+(?=</{_ci(name)}{_DELIM})"


# The fast alternatives: the tags, comments and link tags of nearly every email, read in as
# few sre operations as the tokenizer's rules allow. sre's cost is per operation (a group
# repeated or an alternative entered costs some 100-150 instructions) and per character of
# a set ("[^>]" costs 5 a character, a set of several characters 20-50), so they use sets of
# allowed characters, literal first characters (which sre tests without entering the
# alternative) and one repetition per attribute. Each accepts a subset of what the exact
# grammar after them accepts, ending at the same ">", so anything else (upper case, single
# quotes, unquoted or empty values, a tab or two spaces between attributes) simply falls
# through to the exact grammar. What keeps them exact: after a name made of _NAME_CHARS the
# tokenizer is in the tag name or attribute name state; a single space takes it to "before
# attribute name", "=" right after a name to "before attribute value", where `"` opens a
# value that only `"` closes; spaces and "/" before ">" never stop ">" from ending the tag.
_NAME_CHARS = "-.0-9:_a-z"
_SIMPLE_NAME = f"[{_NAME_CHARS}]*+"
_SIMPLE_ATTRS = rf"""(?:\x20[{_NAME_CHARS}]++="[^"]*+")*+[\x20/]*+>"""
# First letters in the order tried: sre tests the alternatives one after the other.
_FREQUENT = "tdsabcipmhflou"
# A link tag whose first attribute is an href that cannot lead to the web, passed over
# like `_PLAIN_LINK`; no later attribute name starts with "d", so the opt-out marker
# (which must be removed) is not there.
_FAST_LINK_REST = r"""(?:\x20[-.0-9:_a-ce-z][-.0-9:_a-z]*+="[^"]*+")*+[\x20/]*+>"""
# A double-quoted value that neither starts with "h" nor holds a reference where it starts,
# so cannot lead to the web once decoded.
_FAST_NOT_WEB = r"""[^hH&"\x00-\x20][^"]*+"""
_FAST_PLAIN_LINK = (
    rf"""a\x20href="(?:{_FAST_NOT_WEB}|[hH][tT][tT][pP][sS]?://)?"{_FAST_LINK_REST}"""
)
# Attributes before a link tag's href: none starts with "h", so the href after them is the
# first (the one the tokenizer keeps), and none with "d", so the marker is not among them.
_FAST_BEFORE_HREF = r"""(?:\x20[-.0-9:_a-ce-gi-z][-.0-9:_a-z]*+="[^"]*+")*+"""
# A VML element (Outlook's buttons and backgrounds) without an href, or whose href cannot
# lead to the web, passed over: `_PLAIN_VML` reads a tag three times. A bare "http://"
# is not passed over here, as the exact grammar reports it in any VML element.
_FAST_PLAIN_VML = (
    rf"""v:{_SIMPLE_NAME}{_FAST_BEFORE_HREF}"""
    rf"""(?:\x20href="(?:{_FAST_NOT_WEB})?"{_FAST_LINK_REST}|[\x20/]*+>)"""
)
# A link tag in the fast shape: reported with its href's value located. The tokenizer
# reads it as `_read_link_tag` would: the first href, and no marker. A value that starts
# with "http://" or "https://" and holds no "&" (so no character reference), no tab or
# newline and no space or control at its end is the URL as a browser reads it: `fweb`.
_FAST_LINK = (
    rf"""(?P<flink><(?P<fname>a|area|v:{_SIMPLE_NAME}){_FAST_BEFORE_HREF}\x20href="""
    r"""(?:"(?P<fweb>https?://[^"&\t\n\r]*+(?<![\x00-\x20]))"|"(?P<fhref>[^"]*+)")"""
    rf"""{_FAST_LINK_REST})"""
)
# `_PLAIN_VML` fails on any VML element with an href; one in the fast shape fails first.
_PLAIN_VML_UNLESS_LINK = (
    rf"""[vV](?!(?<=v):{_SIMPLE_NAME}{_FAST_BEFORE_HREF}\x20href="):{_PLAIN_VML_ATTRS}"""
)
# A comment without a dash in its text, none that Outlook reads ("<!--[if"), and not the
# abruptly closed "<!-->".
_FAST_COMMENT = r"!--[^->\[][^-]*+-->"
# What opens a link tag (`_scan` reads a conditional comment only if it holds one).
_LINK_NAME = rf"(?:{_names(*_LINK_TAGS)}|{_ci('v:')})"
# A conditional comment with no link tag's opening anywhere in it, passed over: most only
# open or close a table for Outlook, and a step through Python to learn so costs more.
_FAST_PLAIN_CC = rf"!--\[[iI][fF][^-<]*+(?:(?:-(?!-!?>)|<(?!{_LINK_NAME}))[^-<]*+)*+--!?>"


def _name_class(exclude: str) -> str:
    """_NAME_CHARS without ``exclude``, as a set."""
    chars = {chr(c) for c in range(128) if re.fullmatch(f"[{_NAME_CHARS}]", chr(c))}
    return "[" + "".join(re.escape(c) for c in sorted(chars - set(exclude))) + "]"


def _fast_tags(words: tuple[str, ...], prefix: str, *, links: bool) -> list[str]:
    """The fast alternatives for end tags other than ``</body>``, comments, and start tags
    that are none of ``words`` and do not start with ``prefix``.

    A start tag is told apart by its first letter, then its second where some of ``words``
    start with that letter; only names that share two letters with one of ``words`` (``st``
    for ``style``, ``ti`` for ``title``) take a look-ahead. A one-letter name (``<p>``)
    has an alternative of its own, where the attributes must start after a space: read as
    one, ``<px="a>b">`` would end at the second ">", where its name ``px="a`` ends at the
    first.
    """
    rests: dict[str, set[str]] = {}
    for word in words:
        rests.setdefault(word[0], set()).add(word[1:])
    rests.setdefault(prefix[0], set()).add(prefix[1:] + "*")
    alts = []
    order = sorted(string.ascii_lowercase, key=lambda c: _FREQUENT.find(c) % 100)
    for first in order:
        ends = rests.get(first)
        if ends is None:
            alts.append(f"{first}{_SIMPLE_NAME}{_SIMPLE_ATTRS}")
            continue
        seconds = "".join(sorted({e[0] for e in ends if e}))
        alts.append(f"{first}{_name_class(seconds)}{_SIMPLE_NAME}{_SIMPLE_ATTRS}")
        if first == "a" and links:
            alts.append(_FAST_PLAIN_LINK)
        if first == prefix[0] and links:
            alts.append(_FAST_PLAIN_VML)
        if "" not in ends:
            alts.append(f"{first}{_SIMPLE_ATTRS}")
        for second in seconds:
            deeper = [e[1:] for e in ends if e[:1] == second]
            if any(d.endswith("*") for d in deeper):
                continue  # a prefix: every name that starts so is special
            words_left = "|".join(re.escape(d) + _DELIM for d in deeper)
            alts.append(f"{first}{second}(?!{words_left}){_SIMPLE_NAME}{_SIMPLE_ATTRS}")
    return [
        f"/[ac-z]{_SIMPLE_NAME}>",
        f"/b(?!ody{_DELIM}){_SIMPLE_NAME}>",
        *alts,
        _FAST_COMMENT,
        *([_FAST_PLAIN_CC] if links else []),
    ]


def _scanner(*, visible_mode: bool, links: bool = True, fast: bool = True) -> re.Pattern[str]:
    """One step of the scan: pass over everything uninteresting, then report one thing.

    In visible mode, text is passed over only while it is blank and images are reported, so
    that the first visible content ends the step. Without ``links`` (past MAX_LINK_SITES),
    link tags and conditional comments are passed over like any other tag or comment.
    Raw-text elements are passed over with their content, except those that show something
    in visible mode and one that runs to the end of input: every step costs a trip through
    Python, and email heads hold several ``style`` elements.
    """
    stop_tags: tuple[str, ...] = (*_RAW_TEXT, "plaintext")
    if links:
        stop_tags += _LINK_TAGS
    if visible_mode:
        stop_tags += _VISIBLE_TAGS
        # Text as runs of blanks and single blank entities, written as one run before the
        # first construct and one after each (unrolled: a trip round the loop per construct
        # rather than two).
        # ASCII white space first: sre tests a small set faster than the whole of them.
        blank = rf"[\t\n\f\r\x20]*+[{INVISIBLE_CHARS}]*+" if fast else rf"[{INVISIBLE_CHARS}]*+"
        entity = rf"{_INVISIBLE_ENTITY}|"
        lone_lt = lone_lt_first = ""
        visible = rf"| (?P<vis>[^<]|<(?![a-zA-Z!/?])|<{_names(*_VISIBLE_TAGS)})"
    else:
        blank = r"[^<]*+"
        entity = ""
        lone_lt = r"| (?![a-zA-Z!/?])"  # a "<" that starts nothing is text
        # The same, tried early in the two cases that open with one character (sre
        # passes over such an alternative with one comparison when it cannot match): a
        # character that starts no tag, or a second "<" that starts nothing either. A
        # body of 5 MB of "<" took 2 s of CPU failing every other alternative at each
        # "<", 0.4 s so. Placed after the common tags (`fast_alts`), which never try
        # them (+6,000 instructions a corpus email where first place cost +38,000). A
        # "<" before a tag still ends up at `lone_lt`.
        lone_lt_first = r"[^a-zA-Z!/?<] | <(?![a-zA-Z!/?]) |"
        visible = ""
    # Style sheets and scripts run to thousands of characters, which sre reads one by one;
    # the step reports them instead, and `_raw_text_end` finds their end with str.find.
    passed_raw = [
        n
        for n in _RAW_TEXT
        if not (fast and n in _LONG_RAW) and not (visible_mode and n in _VISIBLE_TAGS)
    ]
    if links:
        link_tags = (
            rf"{_PLAIN_LINK_UNLESS_WEB} | {_PLAIN_VML_UNLESS_LINK}"
            if fast
            else rf"{_PLAIN_LINK} | {_PLAIN_VML}"
        )
        comment = r"--(?!\[[iI][fF])"
        fast_link = rf"{_FAST_LINK}|"
        reported = rf"""
            {fast_link if fast else ""}
            (?P<link><(?P<lname>{_names(*_LINK_TAGS)}|{_ci("v:")}[^\t\n\f\r />]*+)
                (?P<lattrs>{_TAIL}))
          | (?P<cc><!--(?P<ccbody>\[[iI][fF]{_COMMENT_TEXT})--!?>)"""
    else:
        link_tags = rf"{_ci('v:')}{_TAIL}"
        comment = "--"
        reported = "(?!)"
    fast_alts = (
        "|".join([*_fast_tags(stop_tags, "v:", links=links), *map(_short_raw, _LONG_RAW)]) + "|"
        if fast
        else ""
    )
    return re.compile(
        rf"""{blank}
        (?:(?:
            {entity}
            <(?:
                {fast_alts}
                {lone_lt_first}
                !(?:{comment}(?>>|->|{_COMMENT_TEXT}--!?>)|(?!--)[^>]*+>)
              | {"|".join(map(_raw_element, passed_raw))}
              | {link_tags}
              | /[ac-zAC-Z]{_TAIL}
              | {"|".join(f"{start}{_TAIL}" for start in _other_starts(stop_tags, "v:"))}
              | /[bB](?!{_ci("ody")}{_NAME_END}){_TAIL}
              | /(?![a-zA-Z])[^>]*+>
              | \?[^>]*+>
              {lone_lt}
            )
        ){blank})*+
        (?:
            {reported}
          {visible}
          | (?P<raw><(?P<rawname>{_names(*_RAW_TEXT, "plaintext")}){_TAIL})
          | (?P<body></{_names("body")}{_TAIL})
          | (?P<end>(?s:.*+))
        )""",
        re.VERBOSE,
    )


class _Scanners(NamedTuple):
    visible: re.Pattern[str]  # from the start, until something visible
    links: re.Pattern[str]  # after that
    rest: re.Pattern[str]  # past MAX_LINK_SITES
    visible_rest: re.Pattern[str]

    @classmethod
    def build(cls, *, fast: bool) -> _Scanners:
        """The scanners; without ``fast``, those of the tokenizer's grammar alone, which
        the tests hold the fast ones to."""
        return cls(
            _scanner(visible_mode=True, fast=fast),
            _scanner(visible_mode=False, fast=fast),
            _scanner(visible_mode=False, links=False, fast=fast),
            _scanner(visible_mode=True, links=False, fast=fast),
        )


_SCANNERS = _Scanners.build(fast=True)
_SCAN_VISIBLE, _SCAN_LINKS = _SCANNERS.visible, _SCANNERS.links
_RAW_END = {name: re.compile(rf"</{_ci(name)}{_DELIM}") for name in _RAW_TEXT}

# Inside a link tag already matched: its first attribute named "href", the others passed
# over inside the regex engine (the tokenizer drops later duplicates of an attribute, so
# an empty first href, `<a href>`, shadows any later one)...
_ATTR_VALUE = r"""(?:"[^"]*+"?|'[^']*+'?|[^\t\n\f\r >"'][^\t\n\f\r >]*+)"""
_HREF = re.compile(
    r"""(?:[\t\n\f\r /]*+(?![hH][rR][eE][fF](?:[\t\n\f\r /=>]|\Z))"""
    rf"""[^\t\n\f\r />][^\t\n\f\r />=]*+(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+{_ATTR_VALUE}?)?+)*+"""
    r"""[\t\n\f\r /]*+[hH][rR][eE][fF](?=[\t\n\f\r /=>]|\Z)"""
    rf"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+(?P<value>{_ATTR_VALUE})?)?+"""
)
# ...and attribute by attribute when the opt-out marker may be present.
_ATTR = re.compile(
    r"""[\t\n\f\r /]*+(?P<name>[^\t\n\f\r />][^\t\n\f\r />=]*+)"""
    r"""(?:[\t\n\f\r ]*+=[\t\n\f\r ]*+"""
    r"""(?P<value>"[^"]*+"?|'[^']*+'?|[^\t\n\f\r >"'][^\t\n\f\r >]*+)?)?+"""
)
_WEB_SCHEME = re.compile(r"https?://", re.IGNORECASE)


class LinkSite(NamedTuple):
    """One ``href`` to a web destination (http or https), as written in the document."""

    start: int  # span of the value as written, quotes included
    end: int
    quote: str  # '"', "'" or "" when the value is unquoted
    url: str  # what a browser would follow: entities decoded, outer spaces and newlines gone
    tag: str  # lower-case tag name: "a", "area", "v:roundrect", ...
    tag_end: int  # offset just past the start tag's ">"
    notrack: bool  # the tag carries the opt-out marker


# A LinkSite from a tuple of its fields, without the Python-level __new__ that a named
# tuple's constructor runs (some 2,000 instructions of the ~10,000 a reported link costs).
_link_site = functools.partial(tuple.__new__, LinkSite)


class HtmlScan:
    """What one scan found; offsets index the scanned string."""

    __slots__ = ("body_close", "data_end", "links", "markers", "visible")

    def __init__(self, length: int) -> None:
        self.links: list[LinkSite] = []
        # Spans of opt-out marker attributes to delete, with the space before them.
        self.markers: list[tuple[int, int]] = []
        self.visible = False  # some text or an image would be shown
        self.body_close: int | None = None  # start of the last `</body>` of the markup proper
        # Where the markup proper stops: the start of a comment, tag or raw-text element that
        # runs unterminated to the end of input, else the length. Text put there is read as
        # content instead of being swallowed by that construct.
        self.data_end = length

    @property
    def pixel_offset(self) -> int:
        """Where an open pixel goes: before the last ``</body>``, else after the content."""
        return self.body_close if self.body_close is not None else self.data_end


def scan_html(html: str, *, stop_at_visible: bool = False) -> HtmlScan:
    """Locate web links, opt-out markers, ``</body>`` and whether anything is visible.

    With ``stop_at_visible`` the scan ends at the first visible content (for emptiness
    checks), and the other findings are incomplete.
    """
    return _scan(html, stop_at_visible, _SCANNERS)


def _scan(html: str, stop_at_visible: bool, scanners: _Scanners) -> HtmlScan:
    scan = HtmlScan(len(html))
    pattern = scanners.visible
    pos = 0
    while True:
        m = pattern.match(html, pos)
        assert m is not None  # the last alternative matches anything, even nothing
        kind = m.lastgroup
        if kind == "flink":
            _read_fast_link(html, m, scan)
            pos = m.end()
            if len(scan.links) >= MAX_LINK_SITES:
                pattern = scanners.visible_rest if pattern is scanners.visible else scanners.rest
        elif kind == "link":
            _read_link_tag(html, m, scan)
            pos = m.end()
            if len(scan.links) >= MAX_LINK_SITES:
                pattern = scanners.visible_rest if pattern is scanners.visible else scanners.rest
        elif kind == "cc":
            # Outlook renders what sits between <!--[if mso]> and <![endif]-->, so links there
            # (VML buttons above all) are followed by real readers. Most of them only open or
            # close a table for Outlook: the fast scanner passes over those that hold no link
            # tag's opening anywhere, even in a value (`_FAST_PLAIN_CC`), and reports the rest.
            start, stop = m.span("ccbody")
            _scan_conditional(html, start, stop, scan, scanners.links)
            pos = m.end()
            if len(scan.links) >= MAX_LINK_SITES:
                pattern = scanners.visible_rest if pattern is scanners.visible else scanners.rest
        elif kind == "vis":
            scan.visible = True
            if stop_at_visible:
                return scan
            pattern = scanners.links if pattern is scanners.visible else scanners.rest
            pos = m.start("vis")
        elif kind == "body":
            scan.body_close = m.start("body")
            pos = m.end()
        elif kind == "raw":
            name = m.group("rawname").lower()
            closing = _raw_text_end(html, name, m.end(), len(html))
            if closing < 0:  # `<plaintext>`, or raw text running to the end of input
                scan.data_end = m.start("raw")
                return scan
            pos = closing
        else:
            if m.start("end") < len(html):
                scan.data_end = m.start("end")
            return scan


def _raw_text_end(html: str, name: str, start: int, stop: int) -> int:
    """Where the end tag of raw-text element ``name`` starts, from ``start``; -1 if none.

    A loop over str.find("<"): memchr reads the text some twenty times faster than a
    regular expression does, and a style sheet holds few "<".
    """
    if name == "plaintext":
        return -1  # nothing ends it
    end_tag = _RAW_END[name]
    pos = html.find("<", start, stop)
    while pos >= 0:
        if end_tag.match(html, pos, stop) is not None:
            return pos
        pos = html.find("<", pos + 1, stop)
    return -1


def _scan_conditional(
    html: str, start: int, stop: int, scan: HtmlScan, pattern: re.Pattern[str]
) -> None:
    """Collect the links in a conditional comment's body, markup only Outlook reads."""
    pos = start
    while len(scan.links) < MAX_LINK_SITES:
        m = pattern.match(html, pos, stop)
        assert m is not None
        kind = m.lastgroup
        if kind == "flink":
            _read_fast_link(html, m, scan)
            pos = m.end()
        elif kind == "link":
            _read_link_tag(html, m, scan)
            pos = m.end()
        elif kind == "raw":
            name = m.group("rawname").lower()
            closing = _raw_text_end(html, name, m.end(), stop)
            if closing < 0:
                return
            pos = closing
        elif kind in ("body", "cc"):
            pos = m.end()
        else:
            return


def _read_fast_link(html: str, m: re.Match[str], scan: HtmlScan) -> None:
    """A link tag the scanner read whole (`_FAST_LINK`): a lower-case name, lower-case
    double-quoted attributes, the first href located, and no opt-out marker."""
    start, end = m.span("fweb")
    if start >= 0:
        url = html[start:end]  # as a browser reads it (see `_FAST_LINK`)
    else:
        start, end = m.span("fhref")
        url = normalise_url(decode_attribute(html[start:end]))
        if _WEB_SCHEME.match(url) is None:
            return
    scan.links.append(_link_site((start - 1, end + 1, '"', url, m["fname"], m.end(), False)))


def _read_link_tag(html: str, m: re.Match[str], scan: HtmlScan) -> None:
    attrs_start, attrs_end = m.start("lattrs"), m.end("lattrs") - 1  # without the ">"
    # Lower-casing finds the marker in any ASCII case several times faster than a regex
    # search. A non-ASCII character that lower-cases to ASCII (the Kelvin sign) can only
    # raise a false alarm, which costs the slower reading below, not a different answer.
    if NOTRACK_ATTRIBUTE not in html[attrs_start:attrs_end].lower():
        href = _HREF.match(html, attrs_start, attrs_end)
        if href is None or href.start("value") < 0:
            return  # no href, or an empty first one
        start, end = href.span("value")
        notrack = False
    else:
        found = _find_href(html, attrs_start, attrs_end, scan)
        if found is None:
            return
        start, end, notrack = found
    quote = html[start]
    if quote == '"' or quote == "'":
        value = html[start + 1 : end - 1]
    else:
        quote, value = "", html[start:end]
    url = normalise_url(decode_attribute(value))
    if _WEB_SCHEME.match(url) is None:
        return
    tag = m.group("lname").lower()
    scan.links.append(_link_site((start, end, quote, url, tag, m.end(), notrack)))


def _find_href(
    html: str, attrs_start: int, attrs_end: int, scan: HtmlScan
) -> tuple[int, int, bool] | None:
    """Read a link tag's attributes one by one: the first ``href`` and any opt-out markers."""
    href: tuple[int, int] | None = None
    seen_href = False
    notrack = False
    for a in _ATTR.finditer(html, attrs_start, attrs_end):
        name = a.group("name")
        if not name.isascii():
            continue
        name = name.lower()
        if name == "href" and not seen_href:
            # The tokenizer drops later duplicates of an attribute, so an empty first href
            # (`<a href>`) shadows any later one.
            seen_href = True
            if a.group("value") is not None:
                href = a.span("value")
        elif name == NOTRACK_ATTRIBUTE:
            notrack = True
            # Drop the space before the marker as well, unless a "/" follows: an unquoted
            # value before the marker would then swallow that "/".
            if html.startswith("/", a.end()):
                scan.markers.append((a.start("name"), a.end()))
            else:
                scan.markers.append((a.start(), a.end()))
    return None if href is None else (href[0], href[1], notrack)


_TAG_OR_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)|<[^>]*+>?", re.DOTALL)
_IMG_ALT = re.compile(r"""<img\b[^>]*?\balt\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s>]+))""", re.I)
_ANCHOR_WINDOW = 4000  # a link's text is near its start tag; do not read a whole document
ANCHOR_TEXT_MAX = 200


@functools.lru_cache(maxsize=64)
def _end_tag(tag: str) -> re.Pattern[str]:
    return re.compile(rf"</{_ci(tag)}{_DELIM}")


def anchor_text(html: str, site: LinkSite) -> str:
    """The text a reader sees on a link, whitespace collapsed, or else its image's alt text."""
    if site.tag == "area":
        return ""
    found = _end_tag(site.tag).search(html, site.tag_end, site.tag_end + _ANCHOR_WINDOW)
    inner = html[site.tag_end : found.start()] if found is not None else ""
    bare = _TAG_OR_COMMENT.sub(" ", inner) if "<" in inner else inner
    text = " ".join(decode_text(bare).split())
    if not text:
        alt = _IMG_ALT.search(inner)
        if alt is not None:
            alt_text = next(g for g in alt.groups() if g is not None)
            text = " ".join(decode_attribute(alt_text).split())
    return text[:ANCHOR_TEXT_MAX]
