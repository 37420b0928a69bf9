"""Instrument every real-world email of the shared corpus and prove nothing else changed.

Two independent views must agree that only link targets and the pixel moved: an HTML5
parser (html5lib) sees the same tree before and after except for those, and the bytes are
the same except for those spans. The helpers here are also used by the property tests.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import AnyStr

import html5lib
import pytest
from html5lib import treebuilders

from mailbeacon.tracking.charset import decode_html_bytes, encode_html
from mailbeacon.tracking.html_links import NOTRACK_ATTRIBUTE, decode_attribute, normalise_url
from mailbeacon.tracking.instrument import (
    instrument,
    is_trackable_url,
    open_url,
    pixel_html,
)
from mailbeacon.tracking.tokens import ClickTarget, TokenCodec

CORPUS = Path(__file__).parents[3] / "shared" / "corpus" / "html"
BASE = "https://t.example.com"
CODEC = TokenCodec([(7, bytes(range(64)))])

_CLICK = re.compile(r"""(["'])https://t\.example\.com/t/c/([A-Za-z0-9_-]+)\1""")
_CLICK_BYTES = re.compile(rb"""(["'])https://t\.example\.com/t/c/([A-Za-z0-9_-]+)\1""")
_UNQUOTED = re.compile(r"""[^\t\n\f\r >"'][^\t\n\f\r >]*""")
_UNQUOTED_BYTES = re.compile(rb"""[^\t\n\f\r >"'][^\t\n\f\r >]*""")
_TREE = treebuilders.getTreeBuilder("etree", ET, fullTree=True)


def pixel_for(copy_id: int) -> str:
    return pixel_html(open_url(BASE, CODEC.mint_open_token(copy_id)))


def _restore(
    original: AnyStr,
    rewritten: AnyStr,
    copy_id: int,
    click: re.Pattern[AnyStr],
    unquoted: re.Pattern[AnyStr],
    decode: Callable[[AnyStr], str],
    mark: int = 0,
) -> tuple[list[ClickTarget], int]:
    """Walk both in step: equal everywhere except where `rewritten` holds a quoted click URL
    and `original` an href value that decodes to the URL sealed in its token.

    Returns the targets found and the offset in `original` that matches offset `mark` of
    `rewritten` (outside the changed values).
    """
    targets: list[ClickTarget] = []
    at, last = 0, 0
    mapped = None
    for m in click.finditer(rewritten):
        if mapped is None and mark <= m.start():
            mapped = at + mark - last
        same = rewritten[last : m.start()]
        assert original[at : at + len(same)] == same, f"changed near offset {at}"
        at += len(same)
        last = m.end()
        if original[at : at + len(m.group())] == m.group():  # was already a click URL
            at += len(m.group())
            continue
        quote = original[at : at + 1]
        if quote in (b'"', b"'", '"', "'"):
            end = original.index(quote, at + 1) + 1
            raw = original[at + 1 : end - 1]
            assert m.group(1) == quote, "the original quoting is kept"
        else:
            assert m.group(1) in ('"', b'"'), "an unquoted value gets double quotes"
            found = unquoted.match(original, at)
            assert found is not None, f"no attribute value at offset {at}"
            end, raw = found.end(), found.group()
        target = CODEC.read_click_token(decode(m.group(2)))
        assert target.copy_id == copy_id
        assert target.url == normalise_url(decode_attribute(decode(raw)))
        targets.append(target)
        at = end
    assert original[at:] == rewritten[last:], f"changed after offset {at}"
    return targets, mapped if mapped is not None else at + mark - last


def restore_text(original: str, rewritten: str, copy_id: int) -> list[ClickTarget]:
    """`_restore` for strings (a document, or the text of a conditional comment)."""
    return _restore(original, rewritten, copy_id, _CLICK, _UNQUOTED, lambda s: s)[0]


def expected_with_pixel(
    original: str, rewritten: str, copy_id: int
) -> tuple[str, list[ClickTarget]]:
    """Check `rewritten` against `original` (links sealed, one pixel inserted); return the
    original with the pixel where it was inserted, and the sealed targets."""
    pixel = pixel_for(copy_id)
    assert rewritten.count(pixel) == 1
    at = rewritten.index(pixel)
    without = rewritten[:at] + rewritten[at + len(pixel) :]
    targets, offset = _restore(original, without, copy_id, _CLICK, _UNQUOTED, lambda s: s, at)
    return original[:offset] + pixel + original[offset:], targets


def restore_bytes(
    original: bytes, rewritten: bytes, copy_id: int, encoding: str
) -> list[ClickTarget]:
    return _restore(
        original,
        rewritten,
        copy_id,
        _CLICK_BYTES,
        _UNQUOTED_BYTES,
        lambda b: b.decode(encoding, "surrogateescape"),
    )[0]


def assert_positions_consistent(targets: list[ClickTarget]) -> None:
    """One destination, one position; positions numbered from 0 in first-seen order."""
    by_url: dict[str, int] = {}
    for target in targets:
        assert by_url.setdefault(target.url, target.position) == target.position
    assert sorted(set(by_url.values())) == list(range(len(by_url)))


def parse(document: str) -> ET.Element:
    return html5lib.HTMLParser(tree=_TREE, namespaceHTMLElements=False).parse(document)


def _is_link_tag(tag: object) -> bool:
    return isinstance(tag, str) and (tag in ("a", "area") or tag.startswith("v:"))


def assert_same_tree(
    before: str, after: str, copy_id: int, *, links: bool = True
) -> list[ClickTarget]:
    """Parse both documents; they may differ only in sealed hrefs and removed opt-out markers.

    Compare a document with its pixel already inserted (see `expected_with_pixel`): where
    the parser puts the pixel, and which formatting elements it reopens around it, is the
    same on both sides then. With ``links``, every web link the parser finds must be sealed,
    unless its tag carried the marker.
    """
    old, new = parse(before), parse(after)
    targets: list[ClickTarget] = []

    def walk(a: ET.Element, b: ET.Element) -> None:
        assert a.tag == b.tag
        assert (a.tail or "") == (b.tail or "")
        if a.tag is ET.Comment:
            targets.extend(restore_text(a.text or "", b.text or "", copy_id))
        else:
            assert (a.text or "") == (b.text or "")
        attrib = dict(a.attrib)
        marked = _is_link_tag(a.tag) and attrib.pop(NOTRACK_ATTRIBUTE, None) is not None
        assert attrib.keys() == b.attrib.keys()
        for name, value in attrib.items():
            href = _is_link_tag(a.tag) and name == "href"
            url = normalise_url(value)
            web = re.match(r"https?://", url, re.I) and is_trackable_url(url, BASE)
            if links and href and web and not marked:
                # Complete: every web link the parser sees is tracked...
                assert b.attrib[name].startswith(f"{BASE}/t/c/"), value
                target = CODEC.read_click_token(b.attrib[name][len(BASE) + 5 :])
                assert (target.copy_id, target.url) == (copy_id, url)
                targets.append(target)
            else:
                # ...and nothing else changes.
                assert b.attrib[name] == value, (a.tag, name)
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            walk(x, y)

    walk(old, new)
    return targets


def _corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*")) if CORPUS.is_dir() else []


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared email corpus is not at {CORPUS}")
@pytest.mark.parametrize("path", _corpus_files(), ids=lambda p: p.name)
def test_corpus_email_changes_only_links_and_pixel(path: Path) -> None:
    data = path.read_bytes()
    document, encoding = decode_html_bytes(data)
    assert encode_html(document, encoding) == data
    copy_id = 1000 + len(data)

    result = instrument(html=document, text=None, copy_id=copy_id, codec=CODEC, base_url=BASE)
    assert result.html is not None

    if result.empty_body:
        assert result.html == document
        assert not result.links
        assert not result.open_tracked
        return
    assert result.open_tracked

    # The tree an HTML5 parser builds differs only in sealed hrefs and the pixel.
    expected, _ = expected_with_pixel(document, result.html, copy_id)
    tree_targets = assert_same_tree(expected, result.html, copy_id)
    assert {(t.position, t.url) for t in tree_targets} <= {
        (link.position, link.url) for link in result.links
    }

    # The bytes differ only in href values and the pixel, which sits before `</body>`.
    output = encode_html(result.html, encoding)
    pixel = pixel_for(copy_id).encode("ascii")
    assert output.count(pixel) == 1
    at = output.index(pixel)
    if re.search(rb"</body", data, re.I):
        assert output[at + len(pixel) : at + len(pixel) + 6].lower() == b"</body"
    byte_targets = restore_bytes(data, output.replace(pixel, b"", 1), copy_id, encoding)
    assert_positions_consistent(byte_targets)
    assert sorted({(t.position, t.url) for t in byte_targets}) == [
        (link.position, link.url) for link in result.links
    ]

    # Instrumenting the output again changes nothing.
    again = instrument(html=result.html, text=None, copy_id=copy_id, codec=CODEC, base_url=BASE)
    assert again.html == result.html
    assert not again.open_tracked
    assert not again.links_tracked


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"the shared email corpus is not at {CORPUS}")
def test_corpus_is_all_there() -> None:
    assert len(_corpus_files()) >= 178
