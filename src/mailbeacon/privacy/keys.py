"""The privacy domain's keys: opt-out links, the opt-out form's stamp, address keys.

All three are HMAC-SHA256 (RFC 2104) under keys derived from one installation
secret, each under its own label so that no value made for one purpose is ever
accepted for another.

* An **opt-out link** names a contact: its id and a 128-bit MAC. It needs no
  database to verify, cannot be guessed from another contact's link, and stays
  valid for as long as the installation keeps its secret.
* A **form stamp** is what the opt-out page's form carries: the contact, when the
  page was shown, and a MAC. The page's POST needs one that is fresh, so only a
  request that follows a GET of the page changes anything; it needs no cookie.
* An **address key** stands for an address where the address itself must not be
  kept (the audit log of an erased contact, the list of erased addresses). It is
  keyed, so a list of addresses cannot be hashed to find who was erased.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from datetime import datetime, timedelta

_MAC_BYTES = 16
_LINK = struct.Struct(">BQ")  # version, contact id
_STAMP = struct.Struct(">BQQ")  # version, contact id, Unix time the page was shown
_VERSION = 1
# How long the opt-out page's form may wait before its button is pressed.
STAMP_LIFETIME = timedelta(days=2)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes | None:
    if not text or len(text) > 200 or not text.isascii():
        return None
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None


class PrivacyKeys:
    def __init__(self, secret: bytes) -> None:
        def derive(label: str) -> bytes:
            return hmac.new(secret, f"mailbeacon privacy: {label}".encode(), "sha256").digest()

        self._link = derive("opt-out link")
        self._stamp = derive("opt-out form stamp")
        self._address = derive("address key")

    @staticmethod
    def _mac(key: bytes, data: bytes) -> bytes:
        return hmac.new(key, data, hashlib.sha256).digest()[:_MAC_BYTES]

    def address_key(self, organisation_id: int, address: str) -> str:
        """A stand-in for an address of one organisation that does not reveal it."""
        data = f"{organisation_id}\n{address.strip().lower()}".encode()
        return hmac.new(self._address, data, hashlib.sha256).hexdigest()

    def opt_out_token(self, contact_id: int) -> str:
        body = _LINK.pack(_VERSION, contact_id)
        return _b64(body + self._mac(self._link, body))

    def read_opt_out_token(self, token: str) -> int | None:
        """The contact an opt-out link names, or None if it was not made here."""
        raw = _unb64(token)
        if raw is None or len(raw) != _LINK.size + _MAC_BYTES:
            return None
        body, mac = raw[: _LINK.size], raw[_LINK.size :]
        if not hmac.compare_digest(mac, self._mac(self._link, body)):
            return None
        version, contact_id = _LINK.unpack(body)
        return contact_id if version == _VERSION else None

    def form_stamp(self, contact_id: int, shown_at: datetime) -> str:
        body = _STAMP.pack(_VERSION, contact_id, int(shown_at.timestamp()))
        return _b64(body + self._mac(self._stamp, body))

    def stamp_is_valid(self, stamp: str, contact_id: int, now: datetime) -> bool:
        """Whether a form stamp was made here, for this contact, not long ago."""
        raw = _unb64(stamp)
        if raw is None or len(raw) != _STAMP.size + _MAC_BYTES:
            return False
        body, mac = raw[: _STAMP.size], raw[_STAMP.size :]
        if not hmac.compare_digest(mac, self._mac(self._stamp, body)):
            return False
        version, stamped_contact, shown = _STAMP.unpack(body)
        age = now.timestamp() - int(shown)
        fresh = -300 <= age <= STAMP_LIFETIME.total_seconds()
        return bool(version == _VERSION and stamped_contact == contact_id and fresh)
