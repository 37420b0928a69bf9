"""Address lists as people type them: parsed, validated and normalised.

A field may hold several addresses separated by commas (or semicolons, which
Outlook users type). The list is split at top level only, so a comma inside a
quoted display name (``"Doe, Jane" <jane@example.org>``) or inside angle
brackets does not split it. Each piece is read with :func:`email.utils.getaddresses`
and its address checked with ``email-validator`` (syntax only: no DNS lookups).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.headerregistry import Address as HeaderAddress
from email.utils import getaddresses

from email_validator import EmailNotValidError, ValidatedEmail, validate_email

# RFC 5321 section 4.5.3.1.3: a path is at most 256 octets, so an address at most 254.
MAX_ADDRESS_LENGTH = 254


@dataclass(frozen=True, slots=True)
class Address:
    """One recipient: the address used on the SMTP envelope and the name shown."""

    email: str  # ASCII form (IDN domains in punycode), domain lower-cased
    name: str = ""

    @property
    def key(self) -> str:
        """The form two addresses are compared by (local parts are case-insensitive in practice)."""
        return self.email.lower()

    def formatted(self) -> str:
        """``Name <address>`` for a header, quoted as RFC 5322 requires (not yet encoded)."""
        return str(HeaderAddress(display_name=self.name, addr_spec=self.email))


@dataclass(slots=True)
class ParsedList:
    addresses: list[Address] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def split_address_list(raw: str) -> list[str]:
    """Split on top-level commas and semicolons, keeping quoted and bracketed text whole."""
    parts: list[str] = []
    current: list[str] = []
    in_quotes = False
    escaped = False
    angle = 0
    comment = 0
    for ch in raw:
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_quotes:
            in_quotes = ch != '"'
        elif ch == '"':
            in_quotes = True
        elif ch == "(":
            comment += 1
        elif ch == ")" and comment:
            comment -= 1
        elif ch == "<" and not comment:
            angle += 1
        elif ch == ">" and angle and not comment:
            angle -= 1
        elif ch in ",;" and not angle and not comment:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_address(piece: str) -> Address:
    """Read one ``Name <address>`` (or a bare address); raise ValueError with the reason."""
    pairs = getaddresses([piece])
    # getaddresses forgives a lot ("ann@x.org junk" reads as "ann@x.orgjunk"), so
    # the address it found must stand in the text as typed.
    if len(pairs) != 1 or not pairs[0][1] or pairs[0][1] not in piece:
        if "<" not in piece:
            _validate(piece)  # raises with email-validator's precise reason
        raise ValueError("it is not of the form name@domain")
    name, addr = pairs[0]
    valid = _validate(addr)
    # Header injection: getaddresses keeps CR/LF inside display names.
    name = " ".join(name.split())
    return Address(email=valid.ascii_email or valid.normalized, name=name)


def _validate(addr: str) -> ValidatedEmail:
    if len(addr) > MAX_ADDRESS_LENGTH:
        raise ValueError(f"it is longer than {MAX_ADDRESS_LENGTH} characters")
    try:
        return validate_email(addr, check_deliverability=False, allow_smtputf8=False)
    except EmailNotValidError as exc:
        reason = str(exc).rstrip(".")
        raise ValueError(reason[:1].lower() + reason[1:]) from exc


def parse_address_list(entries: list[str]) -> ParsedList:
    """Every address of a field, with one message per invalid piece: a sentence that
    reads on its own beside the field (it does not repeat the field's name)."""
    result = ParsedList()
    for entry in entries:
        # Pasted lists may span lines; a line break is never part of an address.
        entry = entry.replace("\r", " ").replace("\n", " ")
        for piece in split_address_list(entry):
            try:
                result.addresses.append(parse_address(piece))
            except ValueError as exc:
                result.errors.append(f"“{piece}” is not a valid address: {exc}.")
    return result
