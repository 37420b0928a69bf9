"""Published network ranges (Apple, mailbox providers, security gateways) and fast lookups.

A hit's address is matched against ranges the operators publish themselves, so
the classifier can tell Apple's Mail Privacy Protection proxy, Gmail's servers or
a Mimecast gateway from a person's own connection. Seed lists ship with the
package (``tracking/data/networks/<name>.txt``); ``refresh_networks`` downloads
the full published lists into the data folder, where they override the seeds
name by name. Only the network's *name* leaves this module: raw addresses are
never stored, only ``truncate_ip`` prefixes.

Lookups run for every hit, so ranges are flattened into sorted, non-overlapping
integer intervals per IP version and found with one ``bisect``.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import logging
import os
import re
import socket
import tempfile
import urllib.parse
import urllib.request
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

SEED_DIR = Path(__file__).with_name("data") / "networks"
# Refreshed lists live in <data_dir>/networks/<name>.txt.
REFRESH_SUBDIR = "networks"

# Machine-readable lists the operators publish. Proofpoint, Mimecast and
# Barracuda publish theirs only as web pages or SPF records, so their shipped
# seeds are kept as they are (pass a source explicitly to refresh them).
DEFAULT_SOURCES: Mapping[str, str] = {
    # iCloud Private Relay egress, CSV "prefix,country,region,city,postal" (RFC 8805 geofeed).
    "apple": "https://mask-api.icloud.com/egress-ip-ranges.csv",
    # Every Google range, JSON {"prefixes": [{"ipv4Prefix": ...}, {"ipv6Prefix": ...}]}.
    "google": "https://www.gstatic.com/ipranges/goog.json",
    # Microsoft 365 endpoints web service, Exchange Online only (mail servers, EOP,
    # Defender and Safe Links), JSON [{"ips": [...]}, ...]. The client request id is
    # the fixed example id Microsoft's documentation uses.
    "microsoft": (
        "https://endpoints.office.com/endpoints/worldwide"
        "?ServiceAreas=Exchange&clientrequestid=b10c5ed1-bad1-445f-b386-b919946339a7"
    ),
}

# Ranges a refreshed list keeps although the downloaded feed does not carry them:
# Apple's own /8 is not a Private Relay egress range, yet Mail Privacy Protection
# fetches from it, and a refresh must not silently drop it.
PINNED_RANGES: Mapping[str, tuple[str, ...]] = {"apple": ("17.0.0.0/8",)}

_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
# A published list that claimed more than this would swallow whole continents;
# such a line is a mistake (or an attack on the list) and is skipped.
_MIN_PREFIX = {4: 8, 6: 16}
_MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024
_IPV4_MAPPED_PREFIX = 0xFFFF


class NetworkRefreshError(Exception):
    """One or more sources could not be refreshed; their previous files were kept."""

    def __init__(self, message: str, counts: Mapping[str, int]) -> None:
        super().__init__(message)
        # What did refresh before the failure, so a caller can still report it.
        self.counts = dict(counts)


def _parse_address(text: str) -> tuple[int, int] | None:
    """(IP version, integer value) of an address, IPv4-mapped IPv6 folded to IPv4."""
    s = text.strip()
    if s.startswith("[") and s.endswith("]"):
        s = s[1:-1]
    try:
        if ":" in s:
            # A zone id ("fe80::1%eth0") names an interface, not part of the address.
            packed = socket.inet_pton(socket.AF_INET6, s.split("%", 1)[0])
            value = int.from_bytes(packed, "big")
            if value >> 32 == _IPV4_MAPPED_PREFIX:
                return 4, value & 0xFFFFFFFF
            return 6, value
        return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, s), "big")
    except (OSError, ValueError):
        return None


def truncate_ip(ip: str) -> str | None:
    """The address's /24 (IPv4) or /48 (IPv6) prefix, the only form that is ever stored."""
    parsed = _parse_address(ip)
    return None if parsed is None else _prefix(*parsed)


def _prefix(version: int, value: int) -> str:
    if version == 4:
        return f"{value >> 24}.{(value >> 16) & 0xFF}.{(value >> 8) & 0xFF}.0/24"
    return str(ipaddress.IPv6Network(((value >> 80) << 80, 48)))


def parse_cidr(text: str) -> tuple[int, int, int] | None:
    """(IP version, first, last) of a CIDR block or single address; None if unreadable.

    Host bits are ignored ("10.0.0.1/8" is 10.0.0.0/8), as published lists are
    not always tidy; blocks wider than /8 (IPv4) or /16 (IPv6) are refused.
    """
    address, _, prefix_text = text.strip().partition("/")
    address = address.strip()
    try:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        value = int.from_bytes(socket.inet_pton(family, address), "big")
    except (OSError, ValueError):
        return None
    version, bits = (6, 128) if family == socket.AF_INET6 else (4, 32)
    if prefix_text:
        prefix_text = prefix_text.strip()
        if not prefix_text.isdigit() or len(prefix_text) > 3:
            return None
        prefix = int(prefix_text)
    else:
        prefix = bits
    if not _MIN_PREFIX[version] <= prefix <= bits:
        return None
    host_mask = (1 << (bits - prefix)) - 1
    first = value & ~host_mask
    return version, first, first | host_mask


def format_cidr(version: int, first: int, last: int) -> str:
    """The CIDR text of a block produced by ``parse_cidr``."""
    bits = 32 if version == 4 else 128
    prefix = bits - (last - first + 1).bit_length() + 1
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return f"{socket.inet_ntop(family, first.to_bytes(bits // 8, 'big'))}/{prefix}"


@dataclass(frozen=True, slots=True)
class _Table:
    """Sorted, non-overlapping [start, end] intervals of one IP version."""

    starts: list[int]
    ends: list[int]
    names: list[str]

    def find(self, value: int) -> str | None:
        i = bisect_right(self.starts, value) - 1
        if i >= 0 and value <= self.ends[i]:
            return self.names[i]
        return None


def _flatten(blocks: list[tuple[int, int, str]]) -> _Table:
    """Turn CIDR blocks into disjoint intervals; inside a wider block, the narrower one wins.

    CIDR blocks either nest or are disjoint, so one sweep with a stack of the
    enclosing blocks is enough: a block's name covers its addresses except
    where a block nested inside it says otherwise.
    """
    blocks.sort(key=lambda b: (b[0], -b[1]))
    starts: list[int] = []
    ends: list[int] = []
    names: list[str] = []

    def emit(first: int, last: int, name: str) -> None:
        if first > last:
            return
        if names and names[-1] == name and ends[-1] + 1 >= first:
            ends[-1] = max(ends[-1], last)
            return
        starts.append(first)
        ends.append(last)
        names.append(name)

    stack: list[tuple[int, str]] = []  # (last address, name) of the enclosing blocks
    cursor = 0  # the first address not emitted yet
    for first, last, name in blocks:
        while stack and stack[-1][0] < first:
            top_last, top_name = stack.pop()
            emit(cursor, top_last, top_name)
            cursor = max(cursor, top_last + 1)
        if stack:
            emit(cursor, first - 1, stack[-1][1])
        cursor = max(cursor, first)
        stack.append((last, name))
    while stack:
        top_last, top_name = stack.pop()
        emit(cursor, top_last, top_name)
        cursor = max(cursor, top_last + 1)
    return _Table(starts, ends, names)


def _list_lines(text: str) -> Iterator[str]:
    """The entries of a plain or CSV list: first field of each line, comments dropped."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            yield re.split(r"[,;\s]", line, maxsplit=1)[0]


class NetworkMap:
    """Which published network, if any, an address belongs to."""

    __slots__ = ("_names", "_v4", "_v6")

    def __init__(self, ranges: Mapping[str, Iterable[str]] | None = None) -> None:
        """Build from ``{name: [CIDR, ...]}``; unreadable entries are skipped."""
        v4: list[tuple[int, int, str]] = []
        v6: list[tuple[int, int, str]] = []
        for name, cidrs in (ranges or {}).items():
            for cidr in cidrs:
                parsed = parse_cidr(cidr)
                if parsed is not None:
                    version, first, last = parsed
                    (v4 if version == 4 else v6).append((first, last, name))
        self._names = sorted({name for _, _, name in v4} | {name for _, _, name in v6})
        self._v4 = _flatten(v4)
        self._v6 = _flatten(v6)

    @classmethod
    def load(cls, data_dir: Path | None = None) -> NetworkMap:
        """The shipped seed lists, each overridden by a refreshed list of the same name."""
        files = {path.stem: path for path in sorted(SEED_DIR.glob("*.txt"))}
        if data_dir is not None:
            refreshed = data_dir / REFRESH_SUBDIR
            if refreshed.is_dir():
                files.update({path.stem: path for path in sorted(refreshed.glob("*.txt"))})
        ranges: dict[str, list[str]] = {}
        for name, path in files.items():
            if not _NAME.fullmatch(name):
                log.warning("ignoring network list %s: not a valid network name", path)
                continue
            try:
                ranges[name] = list(_list_lines(path.read_text(encoding="utf-8")))
            except (OSError, UnicodeDecodeError) as exc:
                # A damaged list must not stop the edge from starting: the
                # classifier works without network data, with lower certainty.
                log.warning("could not read network list %s: %s", path, exc)
        return cls(ranges)

    def lookup(self, ip: str) -> str | None:
        """The network name the address belongs to; None if none or unparsable."""
        parsed = _parse_address(ip)
        if parsed is None:
            return None
        version, value = parsed
        return (self._v4 if version == 4 else self._v6).find(value)

    def describe(self, ip: str) -> tuple[str | None, str | None]:
        """(``truncate_ip(ip)``, ``lookup(ip)``) with the address parsed once."""
        parsed = _parse_address(ip)
        if parsed is None:
            return None, None
        version, value = parsed
        return _prefix(version, value), (self._v4 if version == 4 else self._v6).find(value)

    @property
    def names(self) -> list[str]:
        return list(self._names)

    def is_empty(self) -> bool:
        return not self._names


def _collect_json_strings(node: Any) -> Iterator[str]:
    """Every string in a JSON document; those that are not CIDR blocks are dropped later."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _collect_json_strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _collect_json_strings(value)


def parse_network_list(text: str) -> list[tuple[int, int, int]]:
    """Blocks of a published list: JSON (goog.json, Office 365 endpoints), CSV or plain CIDR."""
    stripped = text.lstrip("\ufeff \t\r\n")
    if stripped[:1] in ("{", "["):
        try:
            entries: Iterable[str] = _collect_json_strings(json.loads(stripped))
        except json.JSONDecodeError:
            entries = _list_lines(text)
    else:
        entries = _list_lines(text)
    blocks = {parsed for entry in entries if (parsed := parse_cidr(entry)) is not None}
    return sorted(blocks)


def _fetch(source: str, timeout: float) -> str:
    """The text of a source: an http(s) URL or a local file path."""
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in ("http", "https"):
        request = urllib.request.Request(  # noqa: S310 - scheme checked just above
            source, headers={"User-Agent": "mailbeacon-networks-refresh"}
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body: bytes = response.read(_MAX_DOWNLOAD_BYTES + 1)
        if len(body) > _MAX_DOWNLOAD_BYTES:
            raise ValueError(f"larger than {_MAX_DOWNLOAD_BYTES} bytes")
        return body.decode("utf-8-sig", errors="replace")
    if scheme == "file":
        source = urllib.request.url2pathname(urllib.parse.urlsplit(source).path)
    elif scheme and len(scheme) > 1:
        # One letter is a Windows drive ("C:\\lists\\apple.txt"), anything else is unsupported.
        raise ValueError(f"unsupported scheme {scheme!r} (use http, https or a file path)")
    return Path(source).read_text(encoding="utf-8-sig", errors="replace")


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` in one step, so a reader never sees half a list."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def refresh_networks(
    data_dir: Path, sources: Mapping[str, str] | None = None, timeout: float = 20
) -> dict[str, int]:
    """Download published lists into ``data_dir/networks/<name>.txt``; counts per name.

    ``sources`` maps a network name to a URL or a local file (default:
    ``DEFAULT_SOURCES``). Each list is parsed before anything is written, and an
    empty or unreadable download keeps the previous file. After trying every
    source, a ``NetworkRefreshError`` names each one that failed.
    """
    chosen = dict(DEFAULT_SOURCES if sources is None else sources)
    target_dir = data_dir / REFRESH_SUBDIR
    target_dir.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    failures: list[str] = []
    for name, source in chosen.items():
        if not _NAME.fullmatch(name):
            failures.append(f"{name!r}: not a valid network name (lowercase letters, digits, - _)")
            continue
        try:
            blocks = parse_network_list(_fetch(source, timeout))
        except (OSError, ValueError, http.client.HTTPException) as exc:
            failures.append(f"{name} from {source}: {exc}")
            continue
        if not blocks:
            failures.append(f"{name} from {source}: no network ranges found in the download")
            continue
        pinned = [p for c in PINNED_RANGES.get(name, ()) if (p := parse_cidr(c)) is not None]
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        lines = [f"# {name}: refreshed from {source} on {stamp}", f"# {len(blocks)} ranges"]
        if pinned:
            lines.append("# kept from the shipped list (not in the downloaded feed):")
            lines.extend(format_cidr(*block) for block in pinned)
        lines.extend(format_cidr(*block) for block in blocks)
        _write_atomically(target_dir / f"{name}.txt", "\n".join(lines) + "\n")
        counts[name] = len(blocks) + len(pinned)
    if failures:
        raise NetworkRefreshError(
            "could not refresh network lists (previous files kept): " + "; ".join(failures),
            counts,
        )
    return counts
