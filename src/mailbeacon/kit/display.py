"""How people and their addresses are shown: the name as written in the email, and
international domains in their own script (``bücher.de``, not ``xn--bcher-kva.de``).

For display only: addresses are stored, compared and sent in ASCII (punycode
domains, RFC 5890), as planning writes them. A label that is not valid IDNA 2008 is
shown as it is stored, so a display never makes up a domain that is not the one mail
goes to.
"""

from __future__ import annotations

import re

import idna

from mailbeacon.kit.addresses import parse_address, split_address_list

# A domain after an @ with at least one punycode label.
_ACE_DOMAIN = re.compile(r"(?<=@)([A-Za-z0-9-]+\.)*xn--[A-Za-z0-9.-]+", re.IGNORECASE)


def unicode_domain(domain: str) -> str:
    """``xn--bcher-kva.de`` as ``bücher.de``; anything IDNA refuses, unchanged."""
    if "xn--" not in domain.lower():
        return domain
    try:
        return str(idna.decode(domain))
    except (idna.IDNAError, UnicodeError, ValueError):
        return domain


def unicode_address(address: str) -> str:
    """An address (or a list of them, as a To header holds) with its domains in Unicode."""
    return _ACE_DOMAIN.sub(lambda m: unicode_domain(m.group(0)), address)


def names_in_headers(*headers: str) -> dict[str, str]:
    """The display names given in To and Cc values (``Ann <ann@x>, ...``), by lower-cased
    address; addresses written without a name are left out."""
    names: dict[str, str] = {}
    for header in headers:
        for piece in split_address_list(header or ""):
            try:
                address = parse_address(piece)
            except ValueError:
                continue
            if address.name:
                names.setdefault(address.key, address.name)
    return names


def display_name(address: str, *sources: dict[str, str] | str | None) -> str:
    """The first name known for ``address``: each source is a map by lower-cased address
    (names from headers) or a name already found (a contact's); empty if none."""
    key = address.strip().lower()
    for source in sources:
        name = source.get(key, "") if isinstance(source, dict) else source or ""
        if name.strip():
            return name.strip()
    return ""


def person(name: str, address: str) -> str:
    """``Ann Buyer (ann@bücher.de)``, or the address alone without a name: for sentences
    such as a notification's title."""
    shown = unicode_address(address)
    return f"{name} ({shown})" if name and name.strip().lower() != address.lower() else shown
