"""Published network ranges: parsing, lookups, truncation and refreshing from local sources."""

from __future__ import annotations

import ipaddress
import json
import random
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.tracking.networks import (
    DEFAULT_SOURCES,
    SEED_DIR,
    NetworkMap,
    NetworkRefreshError,
    format_cidr,
    parse_cidr,
    parse_network_list,
    refresh_networks,
    truncate_ip,
)

# Documentation ranges (RFC 5737, RFC 3849): never anyone's real network.
TEST_RANGES = {
    "gateway": ["192.0.2.0/24", "2001:db8:aa::/48"],
    "provider": ["198.51.100.0/24"],
    "wide": ["203.0.0.0/16"],
    "narrow": ["203.0.113.0/24"],
}

# --- truncate_ip -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "prefix"),
    [
        ("203.0.113.77", "203.0.113.0/24"),
        ("8.8.8.8", "8.8.8.0/24"),
        ("  10.1.2.3 ", "10.1.2.0/24"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1::/48"),
        ("2001:0:0:1::1", "2001::/48"),
        ("[2001:db8:abcd:12::1]", "2001:db8:abcd::/48"),
        ("fe80::1%eth0", "fe80::/48"),
        ("::ffff:203.0.113.9", "203.0.113.0/24"),
        ("::ffff:cb00:7109", "203.0.113.0/24"),
        ("::1", "::/48"),
    ],
)
def test_truncate_ip_keeps_only_the_prefix(ip: str, prefix: str) -> None:
    assert truncate_ip(ip) == prefix


@pytest.mark.parametrize(
    "ip", ["", "nonsense", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4/24", "::g", "1.2.3.4\x00"]
)
def test_truncate_ip_refuses_what_is_not_an_address(ip: str) -> None:
    assert truncate_ip(ip) is None


# --- parsing -----------------------------------------------------------------------


def test_parse_cidr_ignores_host_bits_and_reads_single_addresses() -> None:
    assert parse_cidr("10.0.0.1/8") == (4, 0x0A000000, 0x0AFFFFFF)
    assert parse_cidr("192.0.2.5") == (4, 0xC0000205, 0xC0000205)
    assert parse_cidr(" 2001:db8::/32 ") == (
        6,
        0x20010DB8 << 96,
        (0x20010DB8 << 96) | ((1 << 96) - 1),
    )


@pytest.mark.parametrize(
    "text", ["0.0.0.0/0", "10.0.0.0/7", "::/0", "2001::/15", "1.2.3.0/33", "1.2.3.0/x", "a/24", ""]
)
def test_parse_cidr_refuses_unreadable_or_continent_sized_blocks(text: str) -> None:
    assert parse_cidr(text) is None


@pytest.mark.parametrize(
    "cidr", ["17.0.0.0/8", "192.0.2.128/25", "2001:db8::/32", "2a01:111:f400::/48"]
)
def test_format_cidr_round_trips(cidr: str) -> None:
    parsed = parse_cidr(cidr)
    assert parsed is not None
    assert format_cidr(*parsed) == cidr


def test_parse_network_list_reads_plain_csv_and_json_formats() -> None:
    plain = "# comment\n192.0.2.0/24\n\n198.51.100.0/24  # trailing comment\nnot-a-range\n"
    csv = "192.0.2.0/27,US,US-CA,Los Angeles,\n2001:db8:1::/64,GB,GB-ENG,London,\n"
    goog = json.dumps(
        {
            "syncToken": "1714053903689",
            "creationTime": "2024-04-25T07:05:03.68994",
            "prefixes": [{"ipv4Prefix": "192.0.2.0/24"}, {"ipv6Prefix": "2001:db8::/32"}],
        }
    )
    office = json.dumps(
        [
            {
                "id": 10,
                "serviceArea": "Exchange",
                "urls": ["*.mail.protection.outlook.com"],
                "ips": ["192.0.2.0/24", "2001:db8:f400::/48"],
                "tcpPorts": "25",
            },
            {"id": 9, "serviceArea": "Exchange", "urls": ["outlook.office.com"]},
        ]
    )
    assert [format_cidr(*b) for b in parse_network_list(plain)] == [
        "192.0.2.0/24",
        "198.51.100.0/24",
    ]
    assert [format_cidr(*b) for b in parse_network_list(csv)] == [
        "192.0.2.0/27",
        "2001:db8:1::/64",
    ]
    assert [format_cidr(*b) for b in parse_network_list(goog)] == ["192.0.2.0/24", "2001:db8::/32"]
    assert [format_cidr(*b) for b in parse_network_list(office)] == [
        "192.0.2.0/24",
        "2001:db8:f400::/48",
    ]
    assert parse_network_list("<html><body>Service unavailable</body></html>") == []


# --- lookups -----------------------------------------------------------------------


@pytest.fixture
def test_map() -> NetworkMap:
    return NetworkMap(TEST_RANGES)


@pytest.mark.parametrize(
    ("ip", "name"),
    [
        ("192.0.2.0", "gateway"),
        ("192.0.2.255", "gateway"),
        ("192.0.1.255", None),
        ("192.0.3.0", None),
        ("::ffff:192.0.2.44", "gateway"),
        ("[::ffff:192.0.2.44]", "gateway"),
        ("2001:db8:aa::1", "gateway"),
        ("2001:db8:aa:ffff:ffff:ffff:ffff:ffff", "gateway"),
        ("2001:db8:ab::1", None),
        ("198.51.100.200", "provider"),
        ("203.0.1.1", "wide"),
        ("203.0.113.1", "narrow"),
        ("203.0.112.255", "wide"),
        ("203.0.114.0", "wide"),
        ("8.8.8.8", None),
        ("", None),
        ("not an ip", None),
    ],
)
def test_lookup_finds_the_most_specific_network(
    test_map: NetworkMap, ip: str, name: str | None
) -> None:
    assert test_map.lookup(ip) == name
    # The edge's one-parse form gives what the two separate calls give.
    assert test_map.describe(ip) == (truncate_ip(ip), name)


def test_names_and_emptiness(test_map: NetworkMap) -> None:
    assert test_map.names == ["gateway", "narrow", "provider", "wide"]
    assert not test_map.is_empty()
    empty = NetworkMap()
    assert empty.is_empty()
    assert empty.names == []
    assert empty.lookup("192.0.2.1") is None
    assert NetworkMap({"junk": ["nonsense", "0.0.0.0/0"]}).is_empty()


def test_adjacent_blocks_of_one_name_merge_and_neighbours_stay_apart() -> None:
    networks = NetworkMap({"a": ["192.0.2.0/25", "192.0.2.128/25"], "b": ["192.0.3.0/24"]})
    assert networks.lookup("192.0.2.127") == "a"
    assert networks.lookup("192.0.2.128") == "a"
    assert networks.lookup("192.0.3.0") == "b"


def _reference_lookup(blocks: list[tuple[ipaddress.IPv4Network, str]], ip: str) -> str | None:
    address = ipaddress.ip_address(ip)
    containing = [(net, name) for net, name in blocks if address in net]
    if not containing:
        return None
    return max(containing, key=lambda item: item[0].prefixlen)[1]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=2**32 - 1),
            st.integers(min_value=8, max_value=32),
            st.sampled_from(["a", "b", "c"]),
        ),
        max_size=25,
    ),
    st.lists(st.integers(min_value=0, max_value=2**32 - 1), min_size=1, max_size=25),
)
def test_lookup_agrees_with_a_brute_force_reference(
    raw_blocks: list[tuple[int, int, str]], probes: list[int]
) -> None:
    seen: set[ipaddress.IPv4Network] = set()
    blocks: list[tuple[ipaddress.IPv4Network, str]] = []
    for value, prefix, name in raw_blocks:
        net = ipaddress.IPv4Network((value, prefix), strict=False)
        if net not in seen:  # one name per block: ties would have no single right answer
            seen.add(net)
            blocks.append((net, name))
    ranges: dict[str, list[str]] = {}
    for net, name in blocks:
        ranges.setdefault(name, []).append(str(net))
    networks = NetworkMap(ranges)
    # Probe the edges of every block too, where off-by-one mistakes live.
    addresses = [str(ipaddress.IPv4Address(p)) for p in probes]
    for net, _ in blocks:
        for edge in (
            int(net.network_address) - 1,
            int(net.network_address),
            int(net.broadcast_address),
            int(net.broadcast_address) + 1,
        ):
            if 0 <= edge < 2**32:
                addresses.append(str(ipaddress.IPv4Address(edge)))
    for ip in addresses:
        assert networks.lookup(ip) == _reference_lookup(blocks, ip), ip


def test_lookup_stays_fast_on_a_large_list() -> None:
    """Sanity check on a list the size of Apple's relay feed (no timing assertion)."""
    rng = random.Random(20260101)
    blocks = {
        f"{rng.randrange(1, 224)}.{rng.randrange(256)}.{rng.randrange(256)}.0/24"
        for _ in range(50_000)
    }
    networks = NetworkMap({"relay": sorted(blocks)})
    for block in list(blocks)[:2_000]:
        assert networks.lookup(block.replace(".0/24", ".77")) == "relay"
    misses = 0
    for _ in range(20_000):
        ip = f"{rng.randrange(224, 256)}.{rng.randrange(256)}.{rng.randrange(256)}.1"
        misses += networks.lookup(ip) is None
    assert misses == 20_000


# --- shipped seeds and loading -----------------------------------------------------


def test_shipped_seed_lists_load_and_cover_the_known_networks() -> None:
    networks = NetworkMap.load()
    assert {"apple", "google", "microsoft", "proofpoint", "mimecast", "barracuda"} <= set(
        networks.names
    )
    assert networks.lookup("17.253.1.1") == "apple"  # Apple's own 17.0.0.0/8
    assert networks.lookup("66.249.84.10") == "google"  # where GoogleImageProxy fetches from
    assert networks.lookup("2607:f8b0:4864:20::1") == "google"
    assert networks.lookup("40.107.22.15") == "microsoft"  # Exchange Online Protection
    assert networks.lookup("205.139.110.61") == "mimecast"
    assert networks.lookup("67.231.150.1") == "proofpoint"
    assert networks.lookup("64.235.146.64") == "barracuda"
    assert networks.lookup("203.0.113.1") is None


@pytest.mark.parametrize("path", sorted(SEED_DIR.glob("*.txt")), ids=lambda p: p.stem)
def test_every_seed_line_parses_and_every_file_says_where_it_came_from(path: Path) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    comments = [line for line in lines if line.startswith("#")]
    entries = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    assert comments, f"{path.name} must say in a comment where its ranges come from"
    assert any(word in " ".join(comments).lower() for word in ("http", "publish", "registered"))
    assert entries
    for entry in entries:
        assert parse_cidr(entry) is not None, f"{path.name}: {entry!r}"


def test_refreshed_lists_override_seeds_by_name(tmp_path: Path) -> None:
    refreshed = tmp_path / "networks"
    refreshed.mkdir()
    (refreshed / "apple.txt").write_text("# refreshed\n198.51.100.0/24\n")
    (refreshed / "ironport.txt").write_text("192.0.2.0/24\n")
    (refreshed / "Bad Name.txt").write_text("203.0.113.0/24\n")
    networks = NetworkMap.load(tmp_path)
    assert networks.lookup("198.51.100.7") == "apple"
    assert networks.lookup("17.253.1.1") is None  # the seed's apple list was replaced whole
    assert networks.lookup("192.0.2.1") == "ironport"
    assert networks.lookup("203.0.113.1") is None
    assert networks.lookup("66.249.84.10") == "google"  # other seeds untouched


def test_load_without_a_refreshed_folder_uses_the_seeds(tmp_path: Path) -> None:
    assert NetworkMap.load(tmp_path).names == NetworkMap.load().names


# --- refresh -------------------------------------------------------------------------

APPLE_CSV = (
    "172.224.226.0/27,GB,GB-EN,London,\n"
    "172.224.226.32/31,GB,GB-SC,Aberdeen,\n"
    "2a02:26f7:b3c0:4000::/64,US,US-CA,Los Angeles,\n"
)
GOOG_JSON = json.dumps(
    {
        "syncToken": "1714053903689",
        "creationTime": "2024-04-25T07:05:03.68994",
        "prefixes": [{"ipv4Prefix": "66.249.64.0/19"}, {"ipv6Prefix": "2001:4860::/32"}],
    }
)
PLAIN = "# Mimecast, United States\n205.139.110.0/24\n207.211.31.0/25\n"


class _Routes(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, str]]] = {
        "/egress-ip-ranges.csv": (200, APPLE_CSV),
        "/goog.json": (200, GOOG_JSON),
        "/plain.txt": (200, PLAIN),
        "/maintenance.html": (200, "<html><body>Down for maintenance</body></html>"),
    }

    def do_GET(self) -> None:
        status, body = self.routes.get(self.path, (404, "not found"))
        payload = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Routes)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def test_refresh_from_a_local_http_server(tmp_path: Path, server: str) -> None:
    counts = refresh_networks(
        tmp_path,
        {
            "apple": f"{server}/egress-ip-ranges.csv",
            "google": f"{server}/goog.json",
            "mimecast": f"{server}/plain.txt",
        },
        timeout=5,
    )
    # Apple's own /8 is kept on top of the three relay ranges.
    assert counts == {"apple": 4, "google": 2, "mimecast": 2}
    apple = (tmp_path / "networks" / "apple.txt").read_text()
    assert apple.startswith(f"# apple: refreshed from {server}/egress-ip-ranges.csv on ")
    networks = NetworkMap.load(tmp_path)
    assert networks.lookup("172.224.226.5") == "apple"
    assert networks.lookup("172.224.226.33") == "apple"
    assert networks.lookup("172.224.226.34") is None
    assert networks.lookup("2a02:26f7:b3c0:4000::1") == "apple"
    assert networks.lookup("17.1.2.3") == "apple"
    assert networks.lookup("66.249.90.1") == "google"
    assert networks.lookup("142.250.1.1") is None  # the refreshed google list replaced the seed
    assert networks.lookup("207.211.31.100") == "mimecast"
    assert not list((tmp_path / "networks").glob("*.tmp")), "no temporary file left behind"


def test_refresh_from_a_local_file(tmp_path: Path) -> None:
    source = tmp_path / "lists" / "ironport.txt"
    source.parent.mkdir()
    source.write_text("# Cisco Secure Email, test data\n192.0.2.0/24\n2001:db8:aa::/48\n")
    assert refresh_networks(tmp_path, {"ironport": str(source)}) == {"ironport": 2}
    assert refresh_networks(tmp_path, {"ironport": source.as_uri()}) == {"ironport": 2}
    networks = NetworkMap.load(tmp_path)
    assert networks.lookup("2001:db8:aa::9") == "ironport"


def test_a_failing_source_keeps_the_previous_file_and_names_the_source(
    tmp_path: Path, server: str
) -> None:
    refresh_networks(tmp_path, {"mimecast": f"{server}/plain.txt"}, timeout=5)
    before = (tmp_path / "networks" / "mimecast.txt").read_text()

    broken = f"{server}/gone.txt"
    with pytest.raises(NetworkRefreshError) as caught:
        refresh_networks(
            tmp_path,
            {"mimecast": broken, "google": f"{server}/goog.json"},
            timeout=5,
        )
    message = str(caught.value)
    assert "mimecast" in message
    assert broken in message
    assert "404" in message
    assert (tmp_path / "networks" / "mimecast.txt").read_text() == before
    # The healthy source in the same run was still refreshed.
    assert caught.value.counts == {"google": 2}
    assert (tmp_path / "networks" / "google.txt").exists()


@pytest.mark.parametrize(
    ("path", "expected"),
    [("/maintenance.html", "no network ranges"), ("/does-not-exist", "404")],
)
def test_an_empty_or_missing_download_is_refused(
    tmp_path: Path, server: str, path: str, expected: str
) -> None:
    with pytest.raises(NetworkRefreshError, match=expected):
        refresh_networks(tmp_path, {"apple": f"{server}{path}"}, timeout=5)
    assert not (tmp_path / "networks" / "apple.txt").exists()


def test_refresh_refuses_bad_names_unreachable_hosts_and_odd_schemes(tmp_path: Path) -> None:
    with pytest.raises(NetworkRefreshError, match="not a valid network name"):
        refresh_networks(tmp_path, {"../escape": str(tmp_path / "x.txt")})
    with pytest.raises(NetworkRefreshError, match="unsupported scheme"):
        refresh_networks(tmp_path, {"apple": "ftp://127.0.0.1/list.txt"})
    with pytest.raises(NetworkRefreshError, match=r"missing\.txt"):
        refresh_networks(tmp_path, {"apple": str(tmp_path / "missing.txt")})
    # A closed port on loopback: the connection is refused at once.
    with pytest.raises(NetworkRefreshError, match=re.escape("apple from http://127.0.0.1:9/")):
        refresh_networks(tmp_path, {"apple": "http://127.0.0.1:9/list.csv"}, timeout=2)
    assert not any((tmp_path / "networks").iterdir())
    assert not (tmp_path.parent / "escape.txt").exists()


def test_default_sources_are_the_publishers_own_https_lists() -> None:
    assert set(DEFAULT_SOURCES) == {"apple", "google", "microsoft"}
    assert all(url.startswith("https://") for url in DEFAULT_SOURCES.values())
