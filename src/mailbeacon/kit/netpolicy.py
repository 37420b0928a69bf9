"""Which network addresses the app may connect to on a user's behalf, and connecting there.

Every outbound connection a user can aim (SMTP for sending and "Test connection",
IMAP, later webhooks) goes through here: the host name is resolved once, every
address it resolves to is checked, and the connection is then made to a checked
address itself, never to the name again. A second lookup could answer differently
(DNS rebinding); connecting to the vetted address leaves no such window. The name
stays the one TLS checks the certificate against (and sends as SNI).

The rules, most specific first (registries: IANA IPv4 and IPv6 Special-Purpose
Address Registries, RFC 6890, https://www.iana.org/assignments/iana-ipv4-special-registry/
and https://www.iana.org/assignments/iana-ipv6-special-registry/):

- Cloud metadata services: never. They hand out the machine's credentials to
  whoever asks from inside it. See ``METADATA_ADDRESSES`` and ``METADATA_NAMES``.
- Link-local (169.254.0.0/16, RFC 3927; fe80::/10, RFC 4291 section 2.5.6): never;
  that is where most metadata services and other host-only endpoints live.
- Unspecified, multicast, broadcast and reserved addresses (documentation,
  benchmarking, IETF protocol assignments, 240.0.0.0/4, IPv6 outside 2000::/3):
  never; no mail server or webhook receiver is reached there.
- Private networks (RFC 1918; 100.64.0.0/10 shared address space, RFC 6598;
  fc00::/7 unique local, RFC 4193; fec0::/10 site-local, RFC 3879; 64:ff9b:1::/48
  local-use NAT64, RFC 8215): only when the operator allows them.
- Loopback (127.0.0.0/8, ::1): only when the policy allows it (the demo mailbox,
  or an operator with a mail server on the same machine).

IPv6 forms that carry an IPv4 address (IPv4-mapped ::ffff:0:0/96, RFC 4291
section 2.5.5.2; NAT64 64:ff9b::/96, RFC 6052; 6to4 2002::/16, RFC 3056) are
judged by the IPv4 address inside, so ``::ffff:169.254.169.254`` is link-local too.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ipaddress
import socket
import time
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Resolution runs in threads of its own: getaddrinfo cannot be interrupted, and a
# resolver that hangs must not use up the event loop's default executor.
_RESOLVER_THREADS = 4
_resolver_pool: concurrent.futures.ThreadPoolExecutor | None = None

# Cloud metadata services reached by address. Those inside 169.254.0.0/16 are
# refused as link-local anyway; they are listed so the refusal names the reason.
METADATA_ADDRESSES: frozenset[IPAddress] = frozenset(
    ipaddress.ip_address(a)
    for a in (
        # AWS EC2, Azure IMDS, Google Compute Engine, Oracle Cloud (OCI),
        # DigitalOcean, OpenStack. AWS: docs.aws.amazon.com/AWSEC2/latest/UserGuide/
        # instancedata-data-retrieval.html; OCI: docs.oracle.com/en-us/iaas/Content/
        # Compute/Tasks/gettingmetadata.htm.
        "169.254.169.254",
        # AWS EC2 over IPv6, a unique local address (same AWS page as above).
        "fd00:ec2::254",
        # Alibaba Cloud ECS, inside 100.64.0.0/10 (www.alibabacloud.com/help/en/ecs/
        # user-guide/view-instance-metadata).
        "100.100.100.200",
        # Oracle Cloud Infrastructure Classic (docs.oracle.com/en/cloud/iaas/
        # compute-iaas-cloud/stcsg/retrieving-instance-metadata.html).
        "192.0.0.192",
        # Azure WireServer, a public address that only the Azure host answers
        # (learn.microsoft.com/en-us/azure/virtual-network/what-is-ip-address-168-63-129-16).
        "168.63.129.16",
    )
)

# Names of metadata services, refused before any lookup. Google Compute Engine's
# server is metadata.google.internal (cloud.google.com/compute/docs/metadata/
# querying-metadata); older Google clients used the bare name "metadata"
# (github.com/kubernetes/kubernetes/issues/8512).
METADATA_NAMES = frozenset({"metadata.google.internal", "metadata"})

_net = ipaddress.ip_network
_LINK_LOCAL = (_net("169.254.0.0/16"), _net("fe80::/10"))
_LOOPBACK = (_net("127.0.0.0/8"), _net("::1/128"))
_UNSPECIFIED = (_net("0.0.0.0/8"), _net("::/128"))
_MULTICAST = (_net("224.0.0.0/4"), _net("ff00::/8"))
_RESERVED = (
    _net("192.0.0.0/24"),  # IETF protocol assignments, RFC 6890 section 2.1
    _net("192.0.2.0/24"),  # documentation, RFC 5737
    _net("198.51.100.0/24"),  # documentation, RFC 5737
    _net("203.0.113.0/24"),  # documentation, RFC 5737
    _net("198.18.0.0/15"),  # benchmarking, RFC 2544
    _net("192.88.99.0/24"),  # former 6to4 relay anycast, RFC 7526
    _net("240.0.0.0/4"),  # reserved, RFC 1112 section 4; includes the broadcast address
    _net("100::/64"),  # discard-only, RFC 6666
    _net("2001::/23"),  # IETF protocol assignments (Teredo, benchmarking, ORCHID), RFC 2928
    _net("2001:db8::/32"),  # documentation, RFC 3849
    _net("3fff::/20"),  # documentation, RFC 9637
)
_PRIVATE = (
    _net("10.0.0.0/8"),  # RFC 1918
    _net("172.16.0.0/12"),  # RFC 1918
    _net("192.168.0.0/16"),  # RFC 1918
    _net("100.64.0.0/10"),  # shared address space (carrier-grade NAT), RFC 6598
    _net("fc00::/7"),  # unique local, RFC 4193
    _net("fec0::/10"),  # site-local, deprecated by RFC 3879
    _net("64:ff9b:1::/48"),  # local-use NAT64, RFC 8215
)
# IANA's IPv6 Address Space registry allocates only 2000::/3 to global unicast;
# the rest not named above is reserved by the IETF.
_GLOBAL_UNICAST_V6 = _net("2000::/3")
_NAT64 = _net("64:ff9b::/96")  # RFC 6052


class Rule(StrEnum):
    """Why an address is refused."""

    METADATA = "metadata"
    LINK_LOCAL = "link_local"
    NOT_UNICAST = "not_unicast"
    PRIVATE = "private"
    LOOPBACK = "loopback"


class AddressRefused(Exception):
    """The policy refuses the host; ``message`` names the rule in one sentence."""

    def __init__(self, rule: Rule, message: str) -> None:
        super().__init__(message)
        self.rule = rule
        self.message = message


class HostNotFound(Exception):
    """The host name did not resolve (or not in time)."""


class Unreachable(OSError):
    """No vetted address accepted a TCP connection in time (refused and silent alike)."""


class NetworkSettings(Protocol):
    """What the operator configures (``config.Settings`` has these)."""

    @property
    def ALLOW_PRIVATE_NETWORKS(self) -> bool: ...

    @property
    def ALLOW_LOOPBACK_MAIL_SERVERS(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """Which addresses one kind of outbound connection may reach."""

    allow_private: bool = False
    allow_loopback: bool = False
    # What is connected to, in the refusal sentences: "mail servers", "webhook receivers".
    purpose: str = "mail servers"
    # Seconds a host name may take to resolve.
    resolve_seconds: float = 5.0

    def refusal(self, address: IPAddress) -> Rule | None:
        """The rule that refuses ``address`` under this policy, or None if it may be reached."""
        rule = classify(address)
        if rule == Rule.PRIVATE and self.allow_private:
            return None
        if rule == Rule.LOOPBACK and self.allow_loopback:
            return None
        return rule

    def explain(self, rule: Rule, *, name: bool) -> str:
        """One sentence naming the rule, for an address typed in or a name resolving to it."""
        what, consequence = {
            Rule.METADATA: (
                "belongs to a cloud provider's metadata service",
                "mailbeacon never connects to it",
            ),
            Rule.LINK_LOCAL: (
                "is link-local (169.254.0.0/16 or fe80::/10)",
                "mailbeacon never connects to such addresses",
            ),
            Rule.NOT_UNICAST: (
                "is reserved, multicast or broadcast, not a server's address",
                "mailbeacon never connects to it",
            ),
            Rule.PRIVATE: (
                "is on a private network",
                f"the operator has not allowed private {self.purpose}",
            ),
            Rule.LOOPBACK: (
                "is this machine itself (loopback)",
                f"the operator has not allowed {self.purpose} on this machine",
            ),
        }[rule]
        subject = "This host name points to an address that" if name else "This address"
        return f"{subject} {what}; {consequence}."


def mail_server_policy(settings: NetworkSettings, *, demo: bool = False) -> AddressPolicy:
    """The policy for SMTP and IMAP servers; the demo mailbox is the app's own, on loopback."""
    return AddressPolicy(
        allow_private=settings.ALLOW_PRIVATE_NETWORKS,
        allow_loopback=demo or settings.ALLOW_LOOPBACK_MAIL_SERVERS,
        purpose="mail servers",
    )


def classify(address: IPAddress) -> Rule | None:
    """The rule an address falls under, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return classify(embedded)
        address = ipaddress.IPv6Address(address.packed)  # without a zone id
    if address in METADATA_ADDRESSES:
        return Rule.METADATA
    if _within(address, _LINK_LOCAL):
        return Rule.LINK_LOCAL
    if _within(address, _LOOPBACK):
        return Rule.LOOPBACK
    if _within(address, _UNSPECIFIED + _MULTICAST + _RESERVED):
        return Rule.NOT_UNICAST
    if _within(address, _PRIVATE):
        return Rule.PRIVATE
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST_V6:
        return Rule.NOT_UNICAST
    return None


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(address.packed[-4:])
    return None


def _within(
    address: IPAddress, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    return any(address.version == n.version and address in n for n in networks)


@dataclass(frozen=True, slots=True)
class VettedHost:
    """A host name with every address it resolved to, all allowed by the policy."""

    name: str  # as entered: what TLS checks the certificate against
    addresses: tuple[IPAddress, ...]


def literal_address(host: str) -> IPAddress | None:
    """The address if ``host`` is an IP address literal (brackets allowed), else None."""
    try:
        return ipaddress.ip_address(host.strip().removeprefix("[").removesuffix("]"))
    except ValueError:
        return None


def _normalised_name(host: str) -> str:
    return host.strip().lower().rstrip(".")


def _check_name(host: str) -> None:
    if _normalised_name(host) in METADATA_NAMES:
        raise AddressRefused(
            Rule.METADATA,
            "This host name is a cloud provider's metadata service; mailbeacon never "
            "connects to it.",
        )


def _vet(host: str, addresses: list[IPAddress], policy: AddressPolicy, *, name: bool) -> VettedHost:
    # Every address counts: a name that also points somewhere refused is refused,
    # or the connection could be steered there by the order of the answers.
    for address in addresses:
        rule = policy.refusal(address)
        if rule is not None:
            raise AddressRefused(rule, policy.explain(rule, name=name))
    return VettedHost(host.strip().removeprefix("[").removesuffix("]"), tuple(addresses))


def vet_host(host: str, port: int, policy: AddressPolicy) -> VettedHost:
    """Resolve ``host`` once (bounded in time) and check every address; blocking.

    Raises :class:`AddressRefused` or :class:`HostNotFound`.
    """
    literal = literal_address(host)
    if literal is not None:
        return _vet(host, [literal], policy, name=False)
    _check_name(host)
    future = _pool().submit(_resolve, host, port)
    try:
        addresses = future.result(timeout=policy.resolve_seconds)
    except concurrent.futures.TimeoutError as exc:
        raise HostNotFound(host) from exc
    return _vet(host, addresses, policy, name=True)


async def vet_host_async(host: str, port: int, policy: AddressPolicy) -> VettedHost:
    """:func:`vet_host` for the event loop: the lookup runs in a resolver thread."""
    literal = literal_address(host)
    if literal is not None:
        return _vet(host, [literal], policy, name=False)
    _check_name(host)
    future = asyncio.wrap_future(_pool().submit(_resolve, host, port))
    try:
        addresses = await asyncio.wait_for(future, policy.resolve_seconds)
    except TimeoutError as exc:
        raise HostNotFound(host) from exc
    return _vet(host, addresses, policy, name=True)


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _resolver_pool
    if _resolver_pool is None:
        _resolver_pool = concurrent.futures.ThreadPoolExecutor(
            _RESOLVER_THREADS, thread_name_prefix="mailbeacon-resolve"
        )
    return _resolver_pool


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(
            host.strip(), port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError) as exc:
        raise HostNotFound(host) from exc
    found: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = ipaddress.ip_address(str(sockaddr[0]))
        if address not in found:
            found.append(address)
    if not found:
        raise HostNotFound(host)
    return found


def _sockaddr(
    address: IPAddress, port: int
) -> tuple[int, tuple[str, int] | tuple[str, int, int, int]]:
    if isinstance(address, ipaddress.IPv4Address):
        return socket.AF_INET, (str(address), port)
    return socket.AF_INET6, (str(address), port, 0, 0)


def connect_vetted(vetted: VettedHost, port: int, seconds: float) -> socket.socket:
    """A TCP connection to the first vetted address that answers; blocking.

    The socket is returned with ``seconds`` as its timeout. Raises
    :class:`Unreachable` when none answers within ``seconds`` in all.
    """
    deadline = time.monotonic() + seconds
    for address in vetted.addresses:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        family, sockaddr = _sockaddr(address, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(left)
            sock.connect(sockaddr)
        except OSError:
            sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        sock.settimeout(seconds)
        return sock
    raise Unreachable(f"no answer from {vetted.name}")


async def connect_vetted_async(vetted: VettedHost, port: int, seconds: float) -> socket.socket:
    """:func:`connect_vetted` on the event loop; the socket is returned non-blocking."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    for address in vetted.addresses:
        left = deadline - loop.time()
        if left <= 0:
            break
        family, sockaddr = _sockaddr(address, port)
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, sockaddr), left)
        except (OSError, TimeoutError):
            sock.close()
            continue
        except BaseException:
            sock.close()
            raise
        return sock
    raise Unreachable(f"no answer from {vetted.name}")
