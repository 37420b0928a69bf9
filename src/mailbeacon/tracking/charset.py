"""Turn an HTML body's bytes into text and back without changing a single byte.

The instrumenter works on ``str``; the email carries bytes in whatever charset its author's
tool chose, and not always the one it declares. Decoding uses an error handler that maps
each undecodable byte to a lone surrogate (``surrogateescape``, PEP 383), and a charset is
only chosen once encoding the decoded text gives back exactly the input, so
``encode_html(*decode_html_bytes(data)) == data`` always holds. Text inserted afterwards must
be ASCII, which every charset chosen here encodes as itself.

The charset is picked the way a browser picks it (HTML 13.2.3.2, encoding sniffing): a byte
order mark, then the transport's declaration (the MIME part's ``charset``), then a
``<meta charset>`` or ``http-equiv`` declaration near the start, then UTF-8 if the bytes
are valid UTF-8, else windows-1252, the web's default for legacy text; latin-1 is the last
resort, as it maps every byte. Labels are read as the WHATWG Encoding standard reads them,
so "iso-8859-1" and "us-ascii" mean windows-1252, and "gb2312" means GBK.
"""

from __future__ import annotations

import codecs
import re

__all__ = ["decode_html_bytes", "encode_html"]

_BOMS = (
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE, whose mark is its prefix
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
# Labels whose WHATWG meaning differs from the Python codec of the same name.
_WHATWG_ALIASES = {
    "cp1252": """ascii us-ascii ansi_x3.4-1968 iso-8859-1 iso8859-1 iso_8859-1 latin1 l1 cp819
        ibm819 iso-ir-100 csisolatin1 iso88591 iso_8859-1:1987 x-cp1252""",
    "gbk": "gb2312 gb_2312 gb_2312-80 chinese csgb2312 x-gbk iso-ir-58",
    "cp932": "shift_jis shift-jis sjis x-sjis ms_kanji csshiftjis windows-31j ms932",
    "cp949": "euc-kr ks_c_5601-1987 ks_c_5601-1989 ksc5601 ksc_5601 korean windows-949 cseuckr",
    "cp1254": "iso-8859-9 iso8859-9 latin5 l5 iso-ir-148 csisolatin5",
    "cp874": "tis-620 iso-8859-11 iso8859-11 dos-874",
    "big5hkscs": "big5 big5-hkscs cn-big5 x-x-big5 csbig5",
    # A document that *declares* UTF-16 in ASCII markup cannot be UTF-16: browsers read UTF-8.
    "utf-8": "utf-16 utf-16le utf-16be unicode ucs-2",
}
_WHATWG_LABELS = {
    label: codec for codec, labels in _WHATWG_ALIASES.items() for label in labels.split()
}
# Never guess these from a label: UTF-7 can smuggle markup past filters (WHATWG drops it).
_REFUSED = frozenset({"utf-7"})
_PRESCAN_BYTES = 4096
_COMMENT = re.compile(rb"<!--.*?(?:-->|\Z)", re.DOTALL)
_META_CHARSET = re.compile(rb"""<meta\b[^>]*?\bcharset\s*=\s*["']?\s*([A-Za-z0-9._:\-]+)""", re.I)
_ESCAPED = re.compile("[\udc80-\udcff]")
_NON_ASCII = re.compile("[^\x00-\x7f]")
_UTF8_MAJORITY = 3  # well-formed non-ASCII characters needed per broken byte
# Markup an ASCII-compatible charset must encode as plain ASCII.
_PROBE = "<a href=\"x\" y='z'>&amp;+-/ #\r\n</a>"


def _codec_for(label: str | None) -> str | None:
    """The Python codec for a charset label, or None if unknown, unsafe or not ASCII-based."""
    if not label:
        return None
    label = label.strip().strip("\"'").lower()
    label = _WHATWG_LABELS.get(label, label)
    try:
        name = codecs.lookup(label).name
    except LookupError:
        return None
    if name in _REFUSED:
        return None
    try:
        ascii_based = _PROBE.encode(name) == _PROBE.encode("ascii")
    except (UnicodeError, LookupError):
        return None
    return name if ascii_based else None


def _errors_for(encoding: str) -> str:
    # UTF-16 and UTF-32 units contain bytes below 0x80, which surrogateescape cannot carry;
    # surrogatepass keeps their lone surrogates instead.
    return "surrogatepass" if encoding.startswith(("utf-16", "utf-32")) else "surrogateescape"


def _decode_exactly(data: bytes, encoding: str, errors: str) -> str | None:
    try:
        text = data.decode(encoding, errors)
        if text.encode(encoding, _errors_for(encoding)) == data:
            return text
    except (UnicodeError, LookupError):
        pass
    return None


def _declared_charset(data: bytes) -> str | None:
    head = _COMMENT.sub(b"", data[:_PRESCAN_BYTES])
    m = _META_CHARSET.search(head)
    return m.group(1).decode("ascii") if m else None


def decode_html_bytes(data: bytes, *, transport_charset: str | None = None) -> tuple[str, str]:
    """Decode an HTML body, returning the text and the codec that gives the bytes back.

    ``transport_charset`` is the ``charset`` parameter of the part's Content-Type, which
    outranks the document's own declaration as an HTTP header does. A byte order mark stays
    in the text as U+FEFF, so it is written back too.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            decoded = _decode_exactly(data, encoding, _errors_for(encoding))
            if decoded is not None:
                return decoded, encoding
            break
    for label in (transport_charset, _declared_charset(data)):
        declared = _codec_for(label)
        if declared is not None:
            decoded = _decode_exactly(data, declared, _errors_for(declared))
            if decoded is not None:
                return decoded, declared
    # Nothing usable declared. Legacy 8-bit text almost never forms valid UTF-8 sequences, so
    # UTF-8 with a stray broken byte or two (a damaged transfer) is still UTF-8.
    text = data.decode("utf-8", "surrogateescape")
    broken = len(_ESCAPED.findall(text))
    if broken == 0 or len(_NON_ASCII.findall(text)) - broken >= _UTF8_MAJORITY * broken:
        return text, "utf-8"
    text_1252 = _decode_exactly(data, "cp1252", "surrogateescape")
    if text_1252 is not None:
        return text_1252, "cp1252"
    return data.decode("latin-1"), "latin-1"


def encode_html(text: str, encoding: str) -> bytes:
    """Encode text from `decode_html_bytes` (plus inserted ASCII) back to its charset."""
    return text.encode(encoding, _errors_for(encoding))
