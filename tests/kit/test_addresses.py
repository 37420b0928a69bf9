"""Address lists as typed: splitting, validation messages per field, normalisation."""

from __future__ import annotations

from email.utils import getaddresses

from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.kit.addresses import Address, parse_address_list, split_address_list


def test_several_addresses_in_one_entry_with_names_and_quoted_commas() -> None:
    parsed = parse_address_list(
        ['Ann <ann@Example.ORG>, "Doe, Jane" <jane@example.org>; bob@example.net', "  "]
    )
    assert parsed.errors == []
    assert parsed.addresses == [
        Address("ann@example.org", "Ann"),
        Address("jane@example.org", "Doe, Jane"),
        Address("bob@example.net", ""),
    ]
    assert [a.formatted() for a in parsed.addresses] == [
        "Ann <ann@example.org>",
        '"Doe, Jane" <jane@example.org>',
        "bob@example.net",
    ]


def test_each_invalid_piece_gets_a_sentence_that_does_not_repeat_the_field() -> None:
    parsed = parse_address_list(["ann@example.org, bob@", "carl@example.org junk"])
    assert [a.email for a in parsed.addresses] == ["ann@example.org"]
    assert parsed.errors[0] == (
        "“bob@” is not a valid address: there must be something after the @-sign."
    )
    assert "after the @-sign" in parsed.errors[0]
    # getaddresses alone would read this as "carl@example.orgjunk".
    assert parsed.errors[1].startswith("“carl@example.org junk” is not a valid address: ")


def test_international_domains_go_on_the_envelope_in_ascii() -> None:
    parsed = parse_address_list(["Jöhn Müller <john@bücher.de>"])
    assert parsed.addresses == [Address("john@xn--bcher-kva.de", "Jöhn Müller")]


def test_local_parts_that_need_smtputf8_and_reserved_domains_are_refused() -> None:
    parsed = parse_address_list(["jöhn@example.org", "x@mailbeacon.test", "a@localhost"])
    assert len(parsed.errors) == 3
    assert all(" is not a valid address: " in e and e.endswith(".") for e in parsed.errors)


def test_display_names_cannot_smuggle_header_lines() -> None:
    parsed = parse_address_list(['"Ann\r\nBcc: x@evil.example" <ann@example.org>'])
    assert parsed.addresses[0].name == "Ann Bcc: x@evil.example"
    assert "\n" not in parsed.addresses[0].formatted()


_local = st.from_regex(r"[a-z0-9_-]{1,8}(\.[a-z0-9_-]{1,8})?", fullmatch=True)
_names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)


@settings(deadline=None)
@given(st.lists(st.tuples(_names, _local), min_size=1, max_size=6))
def test_split_keeps_every_formatted_address_whole(pairs: list[tuple[str, str]]) -> None:
    addresses = [Address(f"{local}@example.org", " ".join(name.split())) for name, local in pairs]
    joined = ", ".join(a.formatted() for a in addresses)
    pieces = split_address_list(joined)
    assert len(pieces) == len(addresses)
    for piece, address in zip(pieces, addresses, strict=True):
        assert getaddresses([piece])[0][1] == address.email
