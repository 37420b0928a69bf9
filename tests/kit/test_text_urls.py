"""Web addresses in plain text: where they start and, above all, where they stop."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.kit.text_urls import find_text_urls, trim_text_url


def found(text: str) -> list[str]:
    return [url.url for url in find_text_urls(text)]


@pytest.mark.parametrize(
    ("text", "urls"),
    [
        ("Go to https://x.com/a.", ["https://x.com/a"]),
        ("Really? https://x.com/a?b=1! Yes", ["https://x.com/a?b=1"]),
        ("see https://x.com/a, https://y.org/b; and http://z.net/c:", [
            "https://x.com/a", "https://y.org/b", "http://z.net/c",
        ]),
        ("(see https://x.com/a_(b))", ["https://x.com/a_(b)"]),
        ("(see https://x.com/a_(b)).", ["https://x.com/a_(b)"]),
        ("[link](https://x.com/page)", ["https://x.com/page"]),
        ("<https://x.com/angle>", ["https://x.com/angle"]),
        ('"https://x.com/quoted"', ["https://x.com/quoted"]),
        ("'https://x.com/single'", ["https://x.com/single"]),
        ("HTTPS://X.COM/Upper", ["HTTPS://X.COM/Upper"]),
        ("https://x.com/a\nhttps://y.com/b", ["https://x.com/a", "https://y.com/b"]),
        ("https://x.com/wiki/Foo_(bar)_baz", ["https://x.com/wiki/Foo_(bar)_baz"]),
        ("xhttps://x.com/ me@http://x.com/", []),
        ("http:// is not an address, nor is www.x.com", []),
    ],
)  # fmt: skip
def test_edges(text: str, urls: list[str]) -> None:
    assert found(text) == urls


def test_spans_point_at_the_address() -> None:
    text = "Read (https://x.com/a_(b)). Then <http://y.com/>"
    for url in find_text_urls(text):
        assert text[url.start : url.end] == url.url
    assert [text[u.end] for u in find_text_urls(text)] == [")", ">"]


_PIECES = st.sampled_from(
    [
        "https://x.com/a",
        "http://y.org/p?q=1&r=2#f",
        "https://z.net/a_(b)",
        "HTTP://W.COM",
        "(",
        ")",
        "[",
        "]",
        "<",
        ">",
        ".",
        ",",
        "!",
        "?",
        ":",
        ";",
        "'",
        '"',
        " ",
        "\n",
        "word",
        "é",
    ]
)


@given(st.lists(_PIECES, max_size=30).map("".join))
def test_addresses_are_substrings_without_trailing_punctuation(text: str) -> None:
    last_end = 0
    for url in find_text_urls(text):
        assert text[url.start : url.end] == url.url
        assert url.start >= last_end
        last_end = url.end
        assert url.url.lower().startswith(("http://", "https://"))
        assert url.url[-1] not in ".,;:!?'\"<> \n"
        for close, open_ in ((")", "("), ("]", "[")):
            if url.url.endswith(close):
                assert url.url.count(open_) >= url.url.count(close)


def _trim_one_at_a_time(url: str) -> str:
    """The rule read literally: drop from the end while the last character is trailing
    punctuation or a closing bracket that outnumbers its opening one."""
    closing = {")": "(", "]": "[", "}": "{"}
    while url:
        last = url[-1]
        unbalanced = last in closing and url.count(last) > url.count(closing[last])
        if last not in ".,;:!?'*~" and not unbalanced:
            break
        url = url[:-1]
    return url


@given(st.text(alphabet="a()[]{}.,!x", max_size=40))
def test_bulk_trimming_agrees_with_the_rule_read_literally(url: str) -> None:
    assert trim_text_url(url) == _trim_one_at_a_time(url)


def test_limit_stops_after_that_many_addresses() -> None:
    text = " ".join(f"https://x.com/{i}" for i in range(10))
    assert [u.url for u in find_text_urls(text, 3)] == [f"https://x.com/{i}" for i in range(3)]
