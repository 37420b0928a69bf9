"""Posting one signed event to a receiver, under the operator's address policy.

Signed to the Standard Webhooks specification
(https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md)
with its reference library: ``webhook-id`` (the event's, the same on every retry),
``webhook-timestamp`` (this attempt's, in seconds: receivers refuse stale ones) and
``webhook-signature`` (``v1,`` and the base64 HMAC-SHA256 of ``id.timestamp.body``
under the endpoint's ``whsec_`` secret).

Where a receiver may be follows the rules of every connection a user can aim
(``kit.netpolicy``): the host name is resolved once, every address it resolves to
is vetted, and the request goes to a vetted address itself, never to the name
again (no DNS rebinding). TLS still checks the certificate against the host name,
which is also sent as SNI and in the Host header. Plain http is allowed only to a
receiver on a private network or this machine, and only where the operator
allows those at all: anywhere else the payload (recipients' addresses) would
cross the internet in clear.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

import httpx
from standardwebhooks import Webhook

from mailbeacon import __version__
from mailbeacon.config import Settings
from mailbeacon.kit.netpolicy import (
    METADATA_NAMES,
    AddressPolicy,
    AddressRefused,
    HostNotFound,
    Rule,
    classify,
    literal_address,
    vet_host_async,
)

USER_AGENT = f"mailbeacon-webhooks/{__version__}"
URL_CHARS = 2000
_DEFAULT_PORTS = {"http": 80, "https": 443}


def webhook_policy(settings: Settings) -> AddressPolicy:
    """Where receivers may be: never link-local nor metadata; private networks and this
    machine only if the operator allows them."""
    return AddressPolicy(
        allow_private=settings.ALLOW_PRIVATE_NETWORKS,
        allow_loopback=settings.ALLOW_LOOPBACK_WEBHOOKS,
        purpose="webhook receivers",
    )


def plain_http_allowed(settings: Settings) -> bool:
    """Plain http can reach only private or loopback receivers: allowed only if those are."""
    return settings.ALLOW_PRIVATE_NETWORKS or settings.ALLOW_LOOPBACK_WEBHOOKS


@dataclass(frozen=True, slots=True)
class ReceiverUrl:
    scheme: str
    host: str  # ASCII (IDNA) form, without brackets
    port: int
    target: str  # path and query, as given
    host_header: str


class BadReceiverUrl(ValueError):
    """The URL cannot name a webhook receiver; the message says why in one sentence."""


def parse_receiver_url(url: str) -> ReceiverUrl:
    """The parts of a receiver's URL that a request needs; raises :class:`BadReceiverUrl`."""
    if len(url) > URL_CHARS:
        raise BadReceiverUrl(f"The URL is longer than {URL_CHARS} characters.")
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise BadReceiverUrl("The URL contains spaces or control characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise BadReceiverUrl("The URL cannot be read (is its port a number?).") from exc
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS:
        raise BadReceiverUrl("The URL must begin with https://.")
    if parts.username is not None or parts.password is not None:
        raise BadReceiverUrl(
            "The URL must not carry a user name or password; the signature proves the sender."
        )
    if parts.fragment:
        raise BadReceiverUrl("The URL must not have a #fragment.")
    host = parts.hostname or ""
    if not host:
        raise BadReceiverUrl("The URL has no host.")
    if literal_address(host) is None:
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise BadReceiverUrl("The host name is not a valid domain name.") from exc
    if port == 0:
        raise BadReceiverUrl("The port must be between 1 and 65535.")
    port = port or _DEFAULT_PORTS[scheme]
    target = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    return ReceiverUrl(scheme, host, port, target, host_header)


def refusal_before_lookup(url: ReceiverUrl, policy: AddressPolicy) -> str | None:
    """What the policy says without resolving anything: an address typed in, or a
    metadata service's name; None if only a lookup can tell."""
    literal = literal_address(url.host)
    if literal is not None:
        rule = policy.refusal(literal)
        return None if rule is None else policy.explain(rule, name=False)
    if url.host.lower().rstrip(".") in METADATA_NAMES:
        return (
            "This host name is a cloud provider's metadata service; mailbeacon never "
            "connects to it."
        )
    return None


@dataclass(frozen=True, slots=True)
class Attempt:
    """How one attempt ended."""

    status: int | None  # the receiver's HTTP status; None when it never answered
    error: str  # "" when delivered
    refused: bool = False  # the address policy refused the receiver: nothing was sent

    @property
    def delivered(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signed_headers(webhook_id: str, body: str, secret: str, at: datetime) -> dict[str, str]:
    """The Standard Webhooks headers for this attempt."""
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(at.timestamp())),
        "webhook-signature": Webhook(secret).sign(webhook_id, at, body),
    }


def tls_context() -> ssl.SSLContext:
    """The system's trusted authorities, hostname checking on (httpx's default)."""
    return httpx.create_ssl_context()


async def post_event(
    url: str,
    *,
    webhook_id: str,
    body: str,
    secret: str,
    policy: AddressPolicy,
    allow_plain_http: bool,
    seconds: float,
    verify: ssl.SSLContext,
) -> Attempt:
    """Post one event, signed now; never raises for what the receiver or the network did."""
    try:
        receiver = parse_receiver_url(url)
    except BadReceiverUrl as exc:
        return Attempt(None, str(exc), refused=True)
    try:
        vetted = await vet_host_async(receiver.host, receiver.port, policy)
    except AddressRefused as exc:
        return Attempt(None, exc.message, refused=True)
    except HostNotFound:
        return Attempt(None, f"The host name {receiver.host} did not resolve.")
    if receiver.scheme == "http" and not (
        allow_plain_http
        and all(classify(a) in (Rule.PRIVATE, Rule.LOOPBACK) for a in vetted.addresses)
    ):
        return Attempt(
            None,
            "Plain http is allowed only to a receiver on a private network or this machine; "
            "use https.",
            refused=True,
        )
    at = datetime.fromtimestamp(int(time.time()), UTC)
    data = body.encode()
    headers = {
        "host": receiver.host_header,
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        **signed_headers(webhook_id, body, secret, at),
    }
    extensions = {}
    if receiver.scheme == "https" and literal_address(receiver.host) is None:
        # TLS checks the certificate against the name (and sends it as SNI), though
        # the connection goes to the vetted address.
        extensions["sni_hostname"] = receiver.host
    problem = f"Could not connect to {receiver.host}."
    for address in vetted.addresses:
        shown = f"[{address}]" if address.version == 6 else str(address)
        target = f"{receiver.scheme}://{shown}:{receiver.port}{receiver.target}"
        # A client per attempt: a pooled connection verified for one host name must
        # never carry another host's events to the same address.
        async with httpx.AsyncClient(
            verify=verify, trust_env=False, follow_redirects=False
        ) as client:
            try:
                async with asyncio.timeout(seconds):
                    request = client.build_request(
                        "POST",
                        target,
                        content=data,
                        headers=headers,
                        extensions=extensions,
                        timeout=seconds,
                    )
                    response = await client.send(request, stream=True)
                    await response.aclose()  # the body is not read: its size is theirs
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                problem = f"Could not connect to {receiver.host}: {_first_line(exc)}"
                continue
            except (TimeoutError, httpx.TimeoutException):
                return Attempt(None, f"No answer within {seconds:g} seconds.")
            except httpx.HTTPError as exc:
                return Attempt(None, f"The request failed: {_first_line(exc)}")
        status = response.status_code
        if 200 <= status < 300:
            return Attempt(status, "")
        return Attempt(status, f"The receiver answered {status} {response.reason_phrase}".strip())
    return Attempt(None, problem)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:200]
