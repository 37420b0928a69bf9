from __future__ import annotations

import base64
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailbeacon.tracking.tokens import (
    DEFLATE_MIN_BYTES,
    MAX_CLICK_TOKEN_CHARS,
    MAX_CLICK_URL_BYTES,
    InvalidToken,
    TokenCodec,
    click_token_fits,
)

KEY1 = (1, os.urandom(64))
KEY2 = (2, os.urandom(64))


def test_open_token_round_trips_and_is_short() -> None:
    codec = TokenCodec([KEY1])
    token = codec.mint_open_token(42)
    assert len(token) <= 48
    assert codec.read_open_token(token) == 42


def test_open_token_hides_the_copy_id() -> None:
    codec = TokenCodec([KEY1])
    # Neighbouring ids give unrelated tokens: nothing sequential is exposed.
    a, b = codec.mint_open_token(1000), codec.mint_open_token(1001)
    assert sum(x == y for x, y in zip(a[2:], b[2:], strict=True)) < len(a) // 2


def test_click_token_seals_the_destination() -> None:
    codec = TokenCodec([KEY1])
    url = "https://example.com/pricing?plan=team&utm_source=mail"
    token = codec.mint_click_token(7, 3, url)
    assert "example" not in token and "pricing" not in token
    target = codec.read_click_token(token)
    assert (target.copy_id, target.position, target.url) == (7, 3, url)


def test_open_and_click_tokens_are_not_interchangeable() -> None:
    codec = TokenCodec([KEY1])
    with pytest.raises(InvalidToken):
        codec.read_click_token(codec.mint_open_token(5))
    with pytest.raises(InvalidToken):
        codec.read_open_token(codec.mint_viewer_token(5))


@pytest.mark.parametrize("position", [0, 1, 5, 20, 33])
def test_every_altered_character_is_refused(position: int) -> None:
    codec = TokenCodec([KEY1])
    token = codec.mint_click_token(1, 0, "https://example.com/")
    for replacement in "AQw_-9":
        forged = token[:position] + replacement + token[position + 1 :]
        if forged == token:
            continue
        with pytest.raises(InvalidToken):
            codec.read_click_token(forged)


def test_truncated_and_garbage_tokens_are_refused() -> None:
    codec = TokenCodec([KEY1])
    token = codec.mint_click_token(1, 0, "https://example.com/a")
    for bad in [token[:-1], token[:10], "", "!!!!", "é" * 40, token + "A", "A" * 9000]:
        with pytest.raises(InvalidToken):
            codec.read_click_token(bad)
    with pytest.raises(InvalidToken):
        codec.read_open_token(codec.mint_open_token(1)[:-1])


def test_adding_a_key_keeps_old_tokens_and_removing_it_revokes_them() -> None:
    old = TokenCodec([KEY1])
    token = old.mint_click_token(9, 1, "https://example.com/x")
    rotated = TokenCodec([KEY1, KEY2])
    assert rotated.primary == 2
    assert rotated.read_click_token(token).url == "https://example.com/x"
    new_token = rotated.mint_click_token(9, 1, "https://example.com/x")
    assert new_token != token
    removed = TokenCodec([KEY2])
    with pytest.raises(InvalidToken):
        removed.read_click_token(token)
    assert removed.read_click_token(new_token).copy_id == 9


def test_a_token_of_another_installation_is_refused() -> None:
    ours, theirs = TokenCodec([KEY1]), TokenCodec([(1, os.urandom(64))])
    with pytest.raises(InvalidToken):
        ours.read_open_token(theirs.mint_open_token(1))


@given(
    copy_id=st.integers(min_value=0, max_value=2**63 - 1),
    position=st.integers(min_value=0, max_value=65535),
    url=st.text(max_size=500),
)
def test_click_tokens_round_trip_any_url(copy_id: int, position: int, url: str) -> None:
    codec = TokenCodec([KEY1])
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        return
    target = codec.read_click_token(codec.mint_click_token(copy_id, position, url))
    assert (target.copy_id, target.position, target.url) == (copy_id, position, url)


@given(st.text(max_size=200))
def test_random_strings_never_verify(garbage: str) -> None:
    codec = TokenCodec([KEY1])
    with pytest.raises(InvalidToken):
        codec.read_click_token(garbage)
    with pytest.raises(InvalidToken):
        codec.read_open_token(garbage)


@pytest.mark.parametrize(
    ("copy_id", "position"),
    [(-1, 0), (2**64, 0), (1, -1), (1, 65536), (1, 70_000)],
)
def test_ids_and_positions_out_of_range_are_a_clear_value_error(
    copy_id: int, position: int
) -> None:
    codec = TokenCodec([KEY1])
    with pytest.raises(ValueError, match="outside"):
        codec.mint_click_token(copy_id, position, "https://x.com/")
    if not 0 <= copy_id < 2**64:
        with pytest.raises(ValueError, match="outside"):
            codec.mint_open_token(copy_id)
        with pytest.raises(ValueError, match="outside"):
            codec.mint_viewer_token(copy_id)
    with pytest.raises(TypeError):
        codec.mint_click_token(1.5, 0, "https://x.com/")  # type: ignore[arg-type]


def test_a_token_the_edge_would_refuse_is_never_minted() -> None:
    codec = TokenCodec([KEY1])
    incompressible = "https://x.com/" + base64.urlsafe_b64encode(os.urandom(6000)).decode()
    assert not click_token_fits(incompressible)
    with pytest.raises(ValueError, match="does not fit"):
        codec.mint_click_token(1, 0, incompressible)
    too_long = "https://x.com/" + "a" * MAX_CLICK_URL_BYTES
    assert not click_token_fits(too_long)
    with pytest.raises(ValueError, match="longer than"):
        codec.mint_click_token(1, 0, too_long)
    assert not click_token_fits("https://x.com/\udc80")
    with pytest.raises(ValueError, match="Unicode"):
        codec.mint_click_token(1, 0, "https://x.com/\udc80")


@given(st.text(alphabet="ab/%\u00e9\U0001f600", min_size=1500, max_size=7000))
def test_click_token_fits_agrees_with_minting(tail: str) -> None:
    codec = TokenCodec([KEY1])
    url = "https://x.com/" + tail
    if click_token_fits(url):
        token = codec.mint_click_token(2**64 - 1, 65535, url)
        assert len(token) <= MAX_CLICK_TOKEN_CHARS
        assert codec.read_click_token(token).url == url
    else:
        with pytest.raises(ValueError, match=r"does not fit|longer than"):
            codec.mint_click_token(1, 0, url)


# Minted before destinations under DEFLATE_MIN_BYTES stopped being deflated: the first holds
# a deflated 74-byte URL, the second a 14-byte one as written, the third a deflated long one.
_OLD_KEY = (7, bytes(range(64)))
_OLD_TOKENS = [
    (
        "BxEtovbbSRI1CADqTlgCcRPnxs5hs7x9At-nNsuVaDunFE279m28qtVbp5GpPsSg7lOYqg81FOSKnWPo6oEER7rSJU7D"
        "J13i6i3Y6cOp54ppBdFv6FrIH4sixr-sxaW47A",
        42,
        3,
        "https://example.com/a?utm_source=news&utm_medium=email&utm_campaign=spring",
    ),
    ("B5rRSY8pt7Xl6TCc6-QZrsOt5SoRksCPIxB5SYTxaCm2T5z-97Q76RT-", 1, 0, "https://x.com/"),
    (
        "B0b3WWQ9sfOtaF4gAX0MHLFswVw_KOx2DiKUFfZrDAlwt0cbTKgke0Ap0oPMwDo06wOucNa5",
        2**64 - 1,
        65535,
        "https://example.com/" + "ab" * 100,
    ),
]


@pytest.mark.parametrize(("token", "copy_id", "position", "url"), _OLD_TOKENS)
def test_tokens_minted_before_still_read(token: str, copy_id: int, position: int, url: str) -> None:
    target = TokenCodec([_OLD_KEY]).read_click_token(token)
    assert (target.copy_id, target.position, target.url) == (copy_id, position, url)


def test_only_destinations_long_enough_are_deflated() -> None:
    codec = TokenCodec([KEY1])
    short = "https://example.com/a?utm_source=news&utm_medium=email&utm_campaign=spring"
    assert len(short) < DEFLATE_MIN_BYTES
    token = codec.mint_click_token(42, 3, short)
    # As written: key id, tag and head around the URL's own bytes, in unpadded base64.
    assert len(token) == -(-(1 + 16 + 11 + len(short)) * 4 // 3)
    assert codec.read_click_token(token).url == short
    long = short + "&utm_content=" + "spring" * 20
    assert len(long) >= DEFLATE_MIN_BYTES
    token = codec.mint_click_token(42, 3, long)
    assert len(token) < (1 + 16 + 11 + len(long)) * 4 // 3
    assert codec.read_click_token(token).url == long
