"""Label every open and click: a person, a proxy acting for one, or a machine, and why.

Generic crawler lists are no use here: they call Outlook and Apple Mail bots and
drop Gmail's image proxy, which stands for a real person opening the email. This
classifier is written for mail. It reads three kinds of evidence:

* the User-Agent, through hand-written tables of mail clients, browsers, image
  proxies, link previewers, security scanners and HTTP libraries
  (``mailbeacon.tracking.agents.identify_agent``; stateless, cached);
* the published network the address belongs to (``NetworkMap.lookup``), which
  unmasks gateways that present an ordinary browser agent and confirms Apple
  Mail Privacy Protection;
* timing: the delay after sending and the earlier hits of the same copy.

It must keep working without network data; the verdict's certainty then drops.
The reason is written for the salesperson reading the timeline, not for us.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache

from mailbeacon.models.event import EventKind, EventLabel
from mailbeacon.tracking.agents import AgentClass, AgentKind, Certainty, identify_agent
from mailbeacon.tracking.networks import NetworkMap

__all__ = [
    "MAX_REASON_CHARS",
    "Certainty",
    "HitSignals",
    "Policy",
    "PriorHit",
    "Verdict",
    "classify_hit",
    "explain_hit",
    "judge_request",
    "judge_timing",
]

# The reason column holds 300 characters.
MAX_REASON_CHARS = 300


@dataclass(frozen=True, slots=True)
class Policy:
    too_fast_seconds: float = 5.0
    burst_seconds: float = 5.0
    burst_links: int = 2  # distinct links within burst_seconds from one source => burst
    duplicate_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class HitSignals:
    # An EventKind; the journal's plain "open"/"click" strings compare equal to
    # its members, and any other value is treated as an open.
    kind: EventKind | str
    user_agent: str
    network: str | None = None  # name from NetworkMap.lookup(ip), None if unknown or no data
    is_head: bool = False
    prefetch_hint: str | None = None  # raw value of a Purpose/Sec-Purpose/X-Purpose/X-Moz header
    seconds_after_send: float | None = None
    viewer_is_sender: bool = False
    link_position: int | None = None
    source_key: str = ""  # identifies "one source" (ip prefix + agent); equal keys = same source


@dataclass(frozen=True, slots=True)
class PriorHit:
    """An earlier event of the same recipient copy."""

    kind: EventKind | str
    link_position: int | None
    source_key: str
    seconds_before: float  # how long before this hit it happened (>= 0)
    label: EventLabel


@dataclass(frozen=True, slots=True)
class Verdict:
    label: EventLabel
    reason: str
    certainty: Certainty


# --- Networks --------------------------------------------------------------------


class _Role(StrEnum):
    APPLE = "apple"  # Mail Privacy Protection and iCloud Private Relay
    PROVIDER = "provider"  # mailbox providers: their servers check mail; people are elsewhere
    GATEWAY = "gateway"  # security gateways: nothing from here is a person


@dataclass(frozen=True, slots=True)
class _NetworkRole:
    role: _Role
    display: str
    what: str  # what a non-proxy hit from this network is, for the reason


_NETWORK_ROLES = {
    "apple": _NetworkRole(_Role.APPLE, "Apple", "Apple's proxies"),
    "google": _NetworkRole(
        _Role.PROVIDER,
        "Google",
        "Gmail's own checks or a service running on Google Cloud, not a person's connection",
    ),
    "microsoft": _NetworkRole(
        _Role.PROVIDER,
        "Microsoft 365",
        "Microsoft 365's mail servers, where Defender and Safe Links check messages",
    ),
    "yahoo": _NetworkRole(_Role.PROVIDER, "Yahoo", "Yahoo's own servers checking the email"),
    "proofpoint": _NetworkRole(_Role.GATEWAY, "Proofpoint", "an email security gateway"),
    "mimecast": _NetworkRole(_Role.GATEWAY, "Mimecast", "an email security gateway"),
    "barracuda": _NetworkRole(_Role.GATEWAY, "Barracuda", "an email security gateway"),
}


def _network_role(network: str | None) -> _NetworkRole | None:
    if not network:
        return None
    # The network lists exist to recognise machines: a list someone adds without
    # teaching this table (say "ironport.txt") is treated as a security gateway.
    return _NETWORK_ROLES.get(network, _NetworkRole(_Role.GATEWAY, network, "a security service"))


# --- Classification -------------------------------------------------------------

_PREFETCH_HINT = re.compile(r"prefetch|prerender|preview|preload")
_HINT_TEXT = re.compile(r"[^\w .:;=/-]")


def _clip(reason: str) -> str:
    return reason if len(reason) <= MAX_REASON_CHARS else reason[: MAX_REASON_CHARS - 1] + "…"


def _verdict(label: EventLabel, reason: str, certainty: Certainty) -> Verdict:
    return Verdict(label=label, reason=_clip(reason), certainty=certainty)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _verb(kind: EventKind | str) -> str:
    return "Clicked" if kind == EventKind.CLICK else "Opened"


def _machine_verdict(
    kind: EventKind | str, network: str | None, agent: AgentClass
) -> Verdict | None:
    """Scanner / link preview / Apple MPP from the agent and the network, or None."""
    is_click = kind == EventKind.CLICK
    role = _network_role(network)

    # The agent naming itself is the most specific evidence there is.
    if agent.kind is AgentKind.LINK_PREVIEW:
        return _verdict(EventLabel.LINK_PREVIEW, agent.detail, agent.certainty)
    if agent.kind is AgentKind.SCANNER:
        return _verdict(EventLabel.SCANNER, agent.detail, agent.certainty)

    # A security gateway's network makes anything a scanner, whatever agent it
    # shows: gateways fetch with ordinary (often outdated) browser agents.
    if role is not None and role.role is _Role.GATEWAY:
        return _verdict(
            EventLabel.SCANNER,
            f"From {role.display}'s published network: {role.what} checking the email,"
            f" though it presented itself as {agent.name}",
            Certainty.HIGH,
        )

    if agent.kind is AgentKind.IMAGE_PROXY:
        if is_click:
            return _verdict(
                EventLabel.SCANNER,
                f"{agent.name} only loads images; a link followed through it is an automated"
                " check, not a click",
                Certainty.MEDIUM,
            )
        if role is not None and network != agent.operator:
            return _verdict(
                EventLabel.SCANNER,
                f"Claims to be the {agent.name} but came from {role.display}'s network:"
                " an automated check",
                Certainty.MEDIUM,
            )
        return None

    # Mailbox providers' own servers: Gmail's proxy was handled above, anything
    # else from there is the provider (or its cloud customers) checking the mail.
    if role is not None and role.role is _Role.PROVIDER:
        return _verdict(
            EventLabel.SCANNER,
            f"From {role.display}'s network ({role.what}), though it presented itself as"
            f" {agent.name}",
            Certainty.MEDIUM,
        )
    return _apple_verdict(agent, is_click, role is not None and role.role is _Role.APPLE)


def _apple_verdict(agent: AgentClass, is_click: bool, from_apple: bool) -> Verdict | None:
    """Mail Privacy Protection from the bare agent or Apple Mail's, or None."""
    if agent.kind is AgentKind.BARE:
        if is_click:
            return _verdict(
                EventLabel.SCANNER,
                'A click with the bare agent "Mozilla/5.0": software following the link;'
                " Apple Mail Privacy Protection only loads images",
                Certainty.MEDIUM,
            )
        if from_apple:
            return _verdict(
                EventLabel.APPLE_MPP,
                "Apple Mail Privacy Protection: Apple's proxy loaded the images from Apple's"
                " published network ranges, as it does for every email, so this open is not"
                " confirmed",
                Certainty.HIGH,
            )
        return _verdict(
            EventLabel.APPLE_MPP,
            'Most likely Apple Mail Privacy Protection (the bare agent "Mozilla/5.0"), which'
            " loads images for every email, so this open is not confirmed; the address was not"
            " matched to Apple's published ranges",
            Certainty.MEDIUM,
        )
    if from_apple and agent.kind is AgentKind.APPLE_MAIL and not is_click:
        return _verdict(
            EventLabel.APPLE_MPP,
            "Apple Mail Privacy Protection: Apple Mail's images were loaded from Apple's"
            " published network ranges, which happens for every email, so this open is not"
            " confirmed",
            Certainty.HIGH,
        )
    return None


def _person_verdict(kind: EventKind | str, network: str | None, agent: AgentClass) -> Verdict:
    """The tentative verdict for a hit nothing marked as a machine: human or image proxy."""
    if agent.kind is AgentKind.IMAGE_PROXY:
        # Only an address inside the operator's own published network confirms it.
        confirmed = agent.operator is not None and network == agent.operator
        certainty = Certainty.HIGH if confirmed else Certainty.MEDIUM
        return _verdict(EventLabel.IMAGE_PROXY, agent.detail, certainty)
    role = _network_role(network)
    verb = _verb(kind)
    if role is not None and role.role is _Role.APPLE:
        return _verdict(
            EventLabel.HUMAN,
            f"{verb} in {agent.detail}, through iCloud Private Relay (Apple's network), so"
            " without the recipient's place",
            Certainty.MEDIUM,
        )
    if agent.kind is AgentKind.UNKNOWN:
        return _verdict(
            EventLabel.HUMAN,
            f"{verb} in {agent.detail}: counted as a person, since nothing marks it as automated",
            Certainty.LOW,
        )
    return _verdict(EventLabel.HUMAN, f"{verb} in {agent.detail}", agent.certainty)


def _burst(signals: HitSignals, prior: Sequence[PriorHit], policy: Policy) -> Verdict | None:
    if signals.kind != EventKind.CLICK or signals.link_position is None or not signals.source_key:
        return None
    links = {signals.link_position}
    span = 0.0
    for hit in prior:
        if (
            hit.kind == EventKind.CLICK
            and hit.source_key == signals.source_key
            and hit.link_position is not None
            and 0 <= hit.seconds_before <= policy.burst_seconds
        ):
            links.add(hit.link_position)
            span = max(span, hit.seconds_before)
    if len(links) < max(policy.burst_links, 2):
        return None
    return _verdict(
        EventLabel.BURST,
        f"{len(links)} different links of this email clicked within {_seconds(span)} s from the"
        " same place: software following every link, not a person",
        Certainty.HIGH if len(links) >= 3 else Certainty.MEDIUM,
    )


def _duplicate(signals: HitSignals, prior: Sequence[PriorHit], policy: Policy) -> Verdict | None:
    if not signals.source_key:
        return None
    nearest = math.inf
    for hit in prior:
        if (
            hit.kind == signals.kind
            and hit.source_key == signals.source_key
            and hit.link_position == signals.link_position
            and 0 <= hit.seconds_before <= policy.duplicate_seconds
        ):
            nearest = min(nearest, hit.seconds_before)
    if nearest == math.inf:
        return None
    what = "click on this link" if signals.kind == EventKind.CLICK else "open"
    return _verdict(
        EventLabel.DUPLICATE,
        f"Repeat of the same {what} from the same place {_seconds(nearest)} s earlier",
        Certainty.HIGH,
    )


def classify_hit(
    signals: HitSignals, prior: Sequence[PriorHit] = (), policy: Policy = Policy()
) -> Verdict:
    """One label and a readable reason for a hit, given the copy's earlier hits.

    Precedence, first match wins:

    1. ``self``: the sender's own signed-in browser. It is the surest signal we
       have (an authenticated session) and the one the sender cares most about:
       their own looks must never count, whatever else the hit looks like.
    2. ``prefetch``: HEAD requests, prefetch headers, Gmail's prefetcher. The
       request says of itself that nobody is looking; no evidence can outrank that.
    3. ``scanner`` / ``link_preview`` by agent, then by network. An agent that
       names itself is the most specific; a gateway's or provider's network
       unmasks machines that show an ordinary browser agent. Image proxies and
       the bare MPP agent only ever load images, so a *click* from them is a
       scanner too.
    4. ``apple_mpp``: the bare "Mozilla/5.0", or Apple Mail's agent from Apple's
       ranges. After the scanners, because a gateway sending a bare agent is a
       gateway; before timing, because MPP fetches at delivery and would
       otherwise be called too fast, hiding why.
    5. ``too_fast``, ``burst`` (clicks), ``duplicate``: timing evidence. They
       only override hits that would otherwise count (human, image_proxy): a
       machine already named keeps its more informative label. ``too_fast``
       first, as it needs no history; ``burst`` before ``duplicate``, as a
       burst explains a whole series while a duplicate explains one repeat.
    6. ``image_proxy``, then ``human``.
    """
    verdict, final = judge_request(
        signals.kind,
        signals.user_agent,
        signals.network,
        signals.is_head,
        signals.prefetch_hint,
        signals.viewer_is_sender,
    )
    if final:
        return verdict
    return judge_timing(verdict, signals, prior, policy)


@lru_cache(maxsize=4096)
def judge_request(
    kind: EventKind | str,
    user_agent: str,
    network: str | None,
    is_head: bool,
    prefetch_hint: str | None,
    viewer_is_sender: bool,
) -> tuple[Verdict, bool]:
    """Rules 1-4 and 6 of :func:`classify_hit`: the verdict from the request alone, and
    whether it is final (no timing evidence may override it).

    A pure function of a handful of values that repeat from hit to hit (most hits
    come from a few agents and networks), so it is cached: the consumer labels a
    batch of thousands with a few dozen calls that do the work.
    """
    verb = _verb(kind)
    if viewer_is_sender:
        return _verdict(
            EventLabel.SELF,
            f"{verb} in your own signed-in browser: not counted for the recipient",
            Certainty.HIGH,
        ), True
    if is_head:
        return _verdict(
            EventLabel.PREFETCH,
            "An HTTP HEAD request: software checked that the link works without loading it",
            Certainty.HIGH,
        ), True
    hint = (prefetch_hint or "").strip()
    if hint and _PREFETCH_HINT.search(hint.lower()):
        shown = _HINT_TEXT.sub("", hint)[:60]
        return _verdict(
            EventLabel.PREFETCH,
            f"Fetched ahead of time ({shown}): the app or browser loaded it before anyone"
            " looked at it",
            Certainty.HIGH,
        ), True
    agent = identify_agent(user_agent)
    if agent.kind is AgentKind.PREFETCHER:
        return _verdict(EventLabel.PREFETCH, agent.detail, agent.certainty), True
    machine = _machine_verdict(kind, network, agent)
    if machine is not None:
        return machine, True
    return _person_verdict(kind, network, agent), False


def judge_timing(
    tentative: Verdict, signals: HitSignals, prior: Sequence[PriorHit], policy: Policy
) -> Verdict:
    """Rule 5 of :func:`classify_hit`: a hit that would count (``tentative``, not final)
    overridden by its timing, if the timing says so."""
    after = signals.seconds_after_send
    if after is not None and after < policy.too_fast_seconds:
        return _verdict(
            EventLabel.TOO_FAST,
            f"{_verb(signals.kind)} {_seconds(max(after, 0.0))} s after sending, faster than a"
            f" person reads an email (limit {_seconds(policy.too_fast_seconds)} s): most likely"
            " an automatic check",
            Certainty.MEDIUM,
        )
    timing = _burst(signals, prior, policy) or _duplicate(signals, prior, policy)
    return timing or tentative


def explain_hit(
    kind: EventKind | str,
    user_agent: str,
    ip: str | None,
    seconds_after_send: float | None,
    head: bool,
    networks: NetworkMap,
    policy: Policy,
) -> Verdict:
    """How a single hit like this would be labelled, without any history (for the CLI)."""
    signals = HitSignals(
        kind=kind,
        user_agent=user_agent,
        network=networks.lookup(ip) if ip else None,
        is_head=head,
        seconds_after_send=seconds_after_send,
    )
    return classify_hit(signals, (), policy)
