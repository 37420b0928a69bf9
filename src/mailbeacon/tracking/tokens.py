"""Open and click tokens: opaque, authenticated, verifiable without the database.

Each token is ``base64url(key_id || AES-SIV(key, payload, ad=purpose))``. AES-SIV
(RFC 5297) is a deterministic AEAD: the payload (copy id, link position, the
destination URL) can be neither read nor altered, its 128-bit synthetic IV is the
authentication tag, and the same copy always gets the same open token, so
instrumenting twice is stable. The key id in the first byte lets keys rotate:
new tokens use the primary key, old ones verify as long as their key is kept.
"""

from __future__ import annotations

import base64
import binascii
import functools
import operator
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESSIV

_OPEN_AD = [b"mailbeacon/open/v1"]
_CLICK_AD = [b"mailbeacon/click/v1"]
_VIEWER_AD = [b"mailbeacon/viewer/v1"]
_SIV_KEY_BYTES = 64  # AES-256-SIV
_CLICK_HEAD = struct.Struct(">QHB")  # copy id, link position, flags
_FLAG_DEFLATE = 1
# Longer tokens are refused before any work is done on them.
MAX_CLICK_TOKEN_CHARS = 8192
OPEN_TOKEN_CHARS = 34
MAX_ID = 2**64 - 1  # copy and user ids travel as unsigned 64-bit numbers
MAX_POSITION = 2**16 - 1  # a link position travels as an unsigned 16-bit number
# A destination longer than this is never sealed, however well it compresses: browsers and
# servers stop far below it (Chrome at 2 MB, most servers at 8-16 KB of request line), and it
# bounds what the edge inflates and puts in a Location header.
MAX_CLICK_URL_BYTES = 65536
# Shorter destinations travel as written. Deflating one costs some 50,000 instructions
# whatever its length (mostly zlib building its Huffman trees), more than the rest of its
# token, on the first copy of every new body; below this length it gains little: in the
# corpus nothing under 76 bytes, 10-20 bytes (15%) from 76 to 131, over a third from 379 up.
# The flags say which form a token carries, so tokens of either form read alike, those
# minted when shorter destinations were deflated too.
DEFLATE_MIN_BYTES = 128
# Bytes around the payload in a click token: key id, SIV tag, then the fixed head.
_CLICK_OVERHEAD = 1 + 16 + _CLICK_HEAD.size


class InvalidToken(Exception):
    """The token was not minted by one of our keys, or was altered."""


@dataclass(frozen=True, slots=True)
class ClickTarget:
    copy_id: int
    position: int
    url: str


def _unsigned(value: int, name: str, maximum: int) -> int:
    """``value`` as an int within 0..maximum; struct would raise its own obscure error."""
    number = operator.index(value)  # TypeError for floats, strings and the like
    if not 0 <= number <= maximum:
        raise ValueError(f"{name} {number} is outside 0..{maximum}")
    return number


def _click_body(url: str) -> tuple[bytes, int]:
    """The destination as it travels in a click token (deflated when that is shorter), and
    its flags. Raises ValueError for text that UTF-8 cannot carry (lone surrogates)."""
    if isinstance(url, str) and len(url) <= _REMEMBERED_URL_CHARS:
        return _remembered_click_body(url)
    return _pack_click_body(url)


# Every copy of a message seals the same destinations: deflating each once (a third of the
# cost of a click token) serves all of them. Only URL-sized ones are remembered.
_REMEMBERED_URL_CHARS = 2048


@functools.lru_cache(maxsize=2048)
def _remembered_click_body(url: str) -> tuple[bytes, int]:
    return _pack_click_body(url)


def clear_caches() -> None:
    """Forget the destinations deflated so far (benchmarks measure a body never seen)."""
    _remembered_click_body.cache_clear()


def _pack_click_body(url: str) -> tuple[bytes, int]:
    if not isinstance(url, str):
        raise TypeError(f"a destination is text, not {type(url).__name__}")
    try:
        plain = url.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError("the destination is not valid Unicode text") from exc
    if len(plain) > MAX_CLICK_URL_BYTES:
        raise ValueError(f"the destination is longer than {MAX_CLICK_URL_BYTES} bytes")
    if len(plain) < DEFLATE_MIN_BYTES:
        return plain, 0
    # Raw deflate (no zlib header or trailer). A small window and memory level make it ~7x
    # cheaper to set up than zlib.compress, with the same size on URL-sized input; inflate
    # with wbits=-15 reads any window size.
    packer = zlib.compressobj(9, zlib.DEFLATED, -9, 1)
    packed = packer.compress(plain) + packer.flush()
    if len(packed) < len(plain):
        return packed, _FLAG_DEFLATE
    return plain, 0


def _b64_chars(size: int) -> int:
    return (size * 4 + 2) // 3  # unpadded base64


# A destination of at most this many UTF-8 bytes fits in a click token even as written.
MAX_PLAIN_CLICK_URL_BYTES = MAX_CLICK_TOKEN_CHARS * 3 // 4 - _CLICK_OVERHEAD


def click_token_fits(url: str) -> bool:
    """Whether ``url`` can be sealed in a click token that the edge will accept.

    A token longer than MAX_CLICK_TOKEN_CHARS is refused unread at the edge, so a link
    sealed in one would break: such a destination must stay untracked.
    """
    try:
        if _b64_chars(_CLICK_OVERHEAD + 4 * len(url)) <= MAX_CLICK_TOKEN_CHARS:
            # Even at four UTF-8 bytes a character it fits: no need to compress.
            url.encode("utf-8")  # but lone surrogates cannot travel at all
            return True
        body, _ = _click_body(url)
    except ValueError:  # not valid Unicode text, or too long to seal at all
        return False
    return _b64_chars(_CLICK_OVERHEAD + len(body)) <= MAX_CLICK_TOKEN_CHARS


_URLSAFE = bytes.maketrans(b"+/", b"-_")


def _b64encode(raw: bytes) -> str:
    # base64.urlsafe_b64encode, without its two Python calls around binascii's.
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def _b64decode(token: str) -> bytes:
    # binascii directly, as base64.urlsafe_b64decode would call it: every request
    # on the edge decodes one token.
    try:
        raw = token.encode("ascii")
        decoded = binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + b"=" * (-len(raw) % 4))
    except (UnicodeEncodeError, binascii.Error, ValueError) as exc:
        raise InvalidToken from exc
    # The last character may carry unused bits; only the canonical spelling of
    # a token is accepted, so an altered character can never verify.
    canonical = binascii.b2a_base64(decoded, newline=False).translate(_URLSAFE).rstrip(b"=")
    if canonical != raw:
        raise InvalidToken
    return decoded


class TokenCodec:
    """Mints and verifies tokens with a ring of keys identified by one byte."""

    def __init__(self, keys: Iterable[tuple[int, bytes]], primary: int | None = None) -> None:
        self._ciphers: dict[int, AESSIV] = {}
        for key_id, secret in keys:
            if not 0 <= key_id <= 255:
                raise ValueError(f"key id {key_id} is outside 0..255")
            if len(secret) != _SIV_KEY_BYTES:
                raise ValueError(f"key {key_id} must be {_SIV_KEY_BYTES} bytes")
            self._ciphers[key_id] = AESSIV(secret)
        if not self._ciphers:
            raise ValueError("at least one token key is needed")
        self.primary = primary if primary is not None else max(self._ciphers)
        if self.primary not in self._ciphers:
            raise ValueError(f"primary key {self.primary} is not in the ring")
        self._primary_cipher = self._ciphers[self.primary]
        self._prefix = bytes([self.primary])

    @property
    def key_ids(self) -> list[int]:
        return sorted(self._ciphers)

    def mint_open_token(self, copy_id: int) -> str:
        """Raises ValueError (or TypeError) for a copy id outside 0..MAX_ID."""
        if type(copy_id) is not int or not 0 <= copy_id <= MAX_ID:  # the call costs more
            copy_id = _unsigned(copy_id, "copy id", MAX_ID)
        plain = struct.pack(">Q", copy_id)
        return _b64encode(self._prefix + self._primary_cipher.encrypt(plain, _OPEN_AD))

    def mint_click_token(self, copy_id: int, position: int, url: str) -> str:
        """Seal a destination for one copy and link position.

        Raises ValueError for ids or positions out of range (0..MAX_ID, 0..MAX_POSITION) and
        for a destination that cannot travel in a token the edge accepts (see
        `click_token_fits`); TypeError for arguments of the wrong type.
        """
        if type(copy_id) is not int or not 0 <= copy_id <= MAX_ID:
            copy_id = _unsigned(copy_id, "copy id", MAX_ID)
        if type(position) is not int or not 0 <= position <= MAX_POSITION:
            position = _unsigned(position, "position", MAX_POSITION)
        body, flags = _click_body(url)
        if _b64_chars(_CLICK_OVERHEAD + len(body)) > MAX_CLICK_TOKEN_CHARS:
            raise ValueError(f"the destination does not fit in {MAX_CLICK_TOKEN_CHARS} characters")
        payload = _CLICK_HEAD.pack(copy_id, position, flags) + body
        return _b64encode(self._prefix + self._primary_cipher.encrypt(payload, _CLICK_AD))

    def mint_viewer_token(self, user_id: int) -> str:
        """A cookie value that tells the edge "this browser belongs to user N"."""
        plain = struct.pack(">Q", _unsigned(user_id, "user id", MAX_ID))
        return _b64encode(self._prefix + self._primary_cipher.encrypt(plain, _VIEWER_AD))

    def read_viewer_token(self, token: str) -> int:
        if len(token) != OPEN_TOKEN_CHARS:
            raise InvalidToken
        plain = self._open(token, _VIEWER_AD)
        if len(plain) != 8:
            raise InvalidToken
        return int(struct.unpack(">Q", plain)[0])

    def _open(self, token: str, ad: list[bytes]) -> bytes:
        raw = _b64decode(token)
        if len(raw) < 17:
            raise InvalidToken
        cipher = self._ciphers.get(raw[0])
        if cipher is None:
            raise InvalidToken
        try:
            return cipher.decrypt(raw[1:], ad)
        except InvalidTag as exc:
            raise InvalidToken from exc

    def read_open_token(self, token: str) -> int:
        """Return the copy id sealed in an open token, or raise InvalidToken."""
        if len(token) != OPEN_TOKEN_CHARS:
            raise InvalidToken
        plain = self._open(token, _OPEN_AD)
        if len(plain) != 8:
            raise InvalidToken
        return int(struct.unpack(">Q", plain)[0])

    def read_click_token(self, token: str) -> ClickTarget:
        """Return what a click token carries, or raise InvalidToken."""
        if len(token) > MAX_CLICK_TOKEN_CHARS:
            raise InvalidToken
        plain = self._open(token, _CLICK_AD)
        if len(plain) < _CLICK_HEAD.size:
            raise InvalidToken
        copy_id, position, flags = _CLICK_HEAD.unpack_from(plain)
        body = plain[_CLICK_HEAD.size :]
        try:
            if flags & _FLAG_DEFLATE:
                body = zlib.decompress(body, -15)
            url = body.decode("utf-8")
        except (zlib.error, UnicodeDecodeError) as exc:  # only reachable with a bug or a stolen key
            raise InvalidToken from exc
        return ClickTarget(copy_id, position, url)


def codec_from_secrets(data: dict[str, object]) -> TokenCodec:
    """Build the codec from the `token_keys` entry of the data folder's secrets."""
    entries = data["token_keys"]
    assert isinstance(entries, list)
    keys = [(int(e["id"]), base64.urlsafe_b64decode(e["secret"])) for e in entries]
    primary = data.get("primary_token_key")
    return TokenCodec(keys, int(primary) if isinstance(primary, int) else None)
