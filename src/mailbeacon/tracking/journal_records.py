"""Binary encoding of journal records and segment headers.

The layout is specified in the docstring of ``journal.py`` (section "Record
frame" and "Hit record, type 1"); this module is its only implementation. Both
directions are on hot paths (the edge encodes one record per request, the
consumer decodes a million per 64 MiB segment), so they are written as flat
functions over precompiled ``struct`` formats, without per-field calls.
"""

from __future__ import annotations

import struct
import zlib
from enum import IntEnum

from mailbeacon.models.event import EventKind
from mailbeacon.tracking.hits import Hit

SEGMENT_MAGIC = b"MBJOURNL"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sHHI")  # magic, format version, header length, crc32 of the first 12
HEADER_SIZE = _HEADER.size  # 16

# 0xFB never occurs in UTF-8, so the text fields (most of every payload) cannot
# imitate a marker; the CRC rejects the rare false start inside binary fields.
MARKER = b"\xfbMBR"
_FRAME = struct.Struct("<4sII")  # marker, payload length, crc32 of the payload
FRAME_SIZE = _FRAME.size  # 12
MAX_PAYLOAD = 65536

RECORD_HIT_V1 = 1
_HIT_V1 = struct.Struct("<BB16sdqqqHHHH")
HIT_V1_FIXED = _HIT_V1.size  # 58

_CLICK = 1
_HEAD = 2
_HAS_LINK_POSITION = 4
_HAS_IP_PREFIX = 8
_HAS_NETWORK = 16
_HAS_PREFETCH_HINT = 32
_HAS_VIEWER = 64


class Scan(IntEnum):
    """Why a decoding or searching pass stopped."""

    FULL = 0  # decoded as many records as asked for
    END = 1  # the buffer ended exactly on a record boundary
    PARTIAL = 2  # a record may start here but the buffer ends inside it
    BAD = 3  # the bytes here are not a valid record
    UNKNOWN_TYPE = 4  # a valid frame whose record type this version cannot read
    FOUND = 5  # (search) a valid record starts here
    NONE = 6  # (search) no record starts before the returned offset


def segment_header() -> bytes:
    head = SEGMENT_MAGIC + struct.pack("<HH", FORMAT_VERSION, HEADER_SIZE)
    return head + struct.pack("<I", zlib.crc32(head))


def read_segment_header(data: bytes) -> int | None:
    """The format version a segment header declares, or None if it is damaged or short."""
    if len(data) < HEADER_SIZE:
        return None
    magic, version, size, crc = _HEADER.unpack_from(data)
    if magic != SEGMENT_MAGIC or size != HEADER_SIZE or zlib.crc32(data[:12]) != crc:
        return None
    return int(version)


def encode_hit(hit: Hit) -> bytes:
    """One framed record for ``hit``; raises ValueError for a hit the format cannot hold.

    The uid must be 32 lowercase hex characters (as ``uuid4().hex`` gives), so
    that it reads back identical; integers must fit in 64 bits and each text
    field in 65,535 UTF-8 bytes.
    """
    uid = hit.uid
    raw = bytes.fromhex(uid)
    if len(raw) != 16 or raw.hex() != uid:
        raise ValueError("a journal hit uid is 32 lowercase hex characters")
    kind = hit.kind
    if kind == "open":
        flags = 0
    elif kind == "click":
        flags = _CLICK
    else:
        raise ValueError(f"unknown hit kind {kind!r}")
    if hit.is_head:
        flags |= _HEAD
    position = hit.link_position
    if position is None:
        position = 0
    else:
        flags |= _HAS_LINK_POSITION
    agent = hit.user_agent.encode()
    text = hit.ip_prefix
    if text is None:
        ip = b""
    else:
        ip = text.encode()
        flags |= _HAS_IP_PREFIX
    text = hit.network
    if text is None:
        network = b""
    else:
        network = text.encode()
        flags |= _HAS_NETWORK
    text = hit.prefetch_hint
    if text is None:
        hint = b""
    else:
        hint = text.encode()
        flags |= _HAS_PREFETCH_HINT
    viewer = hit.viewer_user_id
    if viewer is None:
        viewer = 0
    else:
        flags |= _HAS_VIEWER
    try:
        fixed = _HIT_V1.pack(
            RECORD_HIT_V1,
            flags,
            raw,
            hit.occurred_at,
            hit.copy_id,
            position,
            viewer,
            len(agent),
            len(ip),
            len(network),
            len(hint),
        )
    except struct.error as exc:
        raise ValueError(f"hit {uid} does not fit the journal format: {exc}") from None
    payload = fixed + agent + ip + network + hint
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"hit {uid} is larger than a journal record may be")
    return _FRAME.pack(MARKER, len(payload), zlib.crc32(payload)) + payload


def decode_records(
    buf: bytes, start: int, end: int, limit: int, out: list[Hit]
) -> tuple[int, Scan]:
    """Decode up to ``limit`` consecutive records of ``buf[start:end]`` into ``out``.

    Returns the offset where decoding stopped and why. Stops before anything
    that is not a whole valid record, so the caller decides whether it is a
    record still being written, a torn tail or damage.
    """
    unpack_frame = _FRAME.unpack_from
    unpack_hit = _HIT_V1.unpack_from
    crc32 = zlib.crc32
    append = out.append
    pos = start
    count = 0
    while count < limit:
        if pos + FRAME_SIZE > end:
            return pos, (Scan.END if pos == end else Scan.PARTIAL)
        marker, length, crc = unpack_frame(buf, pos)
        body = pos + FRAME_SIZE
        stop = body + length
        if marker != MARKER or length == 0 or length > MAX_PAYLOAD:
            return pos, Scan.BAD
        if stop > end:
            return pos, Scan.PARTIAL
        if crc32(buf[body:stop]) != crc:
            return pos, Scan.BAD
        if buf[body] != RECORD_HIT_V1:
            return pos, Scan.UNKNOWN_TYPE
        if length < HIT_V1_FIXED:
            return pos, Scan.BAD
        (_, flags, uid, at, copy_id, position, viewer, n_agent, n_ip, n_net, n_hint) = unpack_hit(
            buf, body
        )
        a = body + HIT_V1_FIXED
        b = a + n_agent
        c = b + n_ip
        d = c + n_net
        e = d + n_hint
        if e != stop:
            return pos, Scan.BAD
        try:
            append(
                Hit(
                    uid.hex(),
                    EventKind.CLICK if flags & _CLICK else EventKind.OPEN,
                    copy_id,
                    position if flags & _HAS_LINK_POSITION else None,
                    at,
                    buf[a:b].decode(),
                    buf[b:c].decode() if flags & _HAS_IP_PREFIX else None,
                    buf[c:d].decode() if flags & _HAS_NETWORK else None,
                    bool(flags & _HEAD),
                    buf[d:e].decode() if flags & _HAS_PREFETCH_HINT else None,
                    viewer if flags & _HAS_VIEWER else None,
                )
            )
        except UnicodeDecodeError:
            # The CRC matched, so the writer itself wrote this: treat it as damage
            # rather than stop the whole segment on it.
            return pos, Scan.BAD
        pos = stop
        count += 1
    return pos, Scan.FULL


def find_record(buf: bytes, start: int, end: int) -> tuple[int, Scan]:
    """Search ``buf[start:end]`` for the next offset where a valid record starts.

    FOUND: a whole valid frame starts at the offset. PARTIAL: a plausible frame
    starts there but runs past ``end``. NONE: nothing before the offset, which
    is where the next search must resume (a marker may straddle ``end``).
    """
    unpack_frame = _FRAME.unpack_from
    crc32 = zlib.crc32
    pos = start
    while True:
        pos = buf.find(MARKER, pos, end)
        if pos < 0:
            return max(start, end - len(MARKER) + 1), Scan.NONE
        if pos + FRAME_SIZE > end:
            return pos, Scan.PARTIAL
        _, length, crc = unpack_frame(buf, pos)
        if 0 < length <= MAX_PAYLOAD:
            stop = pos + FRAME_SIZE + length
            if stop > end:
                return pos, Scan.PARTIAL
            if crc32(buf[pos + FRAME_SIZE : stop]) == crc:
                return pos, Scan.FOUND
        pos += 1
