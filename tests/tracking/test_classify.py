"""The hit classifier's decision rules: networks, precedence, timing, robustness."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.models.event import EventLabel
from mailbeacon.tracking.agents import AgentKind, identify_agent
from mailbeacon.tracking.classify import (
    MAX_REASON_CHARS,
    HitSignals,
    Policy,
    PriorHit,
    Verdict,
    classify_hit,
    explain_hit,
)
from mailbeacon.tracking.networks import NetworkMap
from tests.tracking.agent_strings import (
    APPLE_MAIL_MAC,
    CHROME,
    GMAIL_PREFETCHER,
    GMAIL_PROXY,
    SAFARI_IOS,
    THUNDERBIRD,
)

L = EventLabel


def _hit(kind: str = "open", user_agent: str = "", **fields: Any) -> HitSignals:
    return HitSignals(kind=kind, user_agent=user_agent, **fields)


# --- networks ------------------------------------------------------------------------

NETWORKS = NetworkMap(
    {
        "apple": ["192.0.2.0/26", "2001:db8:a::/48"],
        "google": ["192.0.2.64/26"],
        "microsoft": ["192.0.2.128/26"],
        "mimecast": ["198.51.100.0/26"],
        "proofpoint": ["198.51.100.64/26"],
        "barracuda": ["198.51.100.128/26"],
        "ironport": ["198.51.100.192/26"],  # a list the classifier has no entry for
    }
)
APPLE_IP, GOOGLE_IP, MICROSOFT_IP = "192.0.2.10", "192.0.2.70", "192.0.2.130"
GATEWAY_IPS = {
    "mimecast": "198.51.100.10",
    "proofpoint": "198.51.100.70",
    "barracuda": "198.51.100.130",
    "ironport": "198.51.100.200",
}
POLICY = Policy()


def _explain(kind: str, agent: str, ip: str | None, after: float | None = None) -> Verdict:
    return explain_hit(kind, agent, ip, after, False, NETWORKS, POLICY)


@pytest.mark.parametrize("gateway", sorted(GATEWAY_IPS))
@pytest.mark.parametrize("agent", [CHROME, SAFARI_IOS, THUNDERBIRD, "Mozilla/5.0", GMAIL_PROXY])
def test_a_gateway_network_makes_any_agent_a_scanner(gateway: str, agent: str) -> None:
    for kind in ("open", "click"):
        verdict = _explain(kind, agent, GATEWAY_IPS[gateway], after=3600)
        assert verdict.label == L.SCANNER, verdict.reason
    if gateway != "ironport":
        assert verdict.certainty == "high"
        assert "published network" in verdict.reason


@pytest.mark.parametrize("ip", [GOOGLE_IP, MICROSOFT_IP])
def test_a_browser_agent_from_a_mail_providers_network_is_a_scanner(ip: str) -> None:
    verdict = _explain("click", CHROME, ip, after=3600)
    assert (verdict.label, verdict.certainty) == (L.SCANNER, "medium")


def test_gmail_proxy_from_googles_network_is_a_certain_open() -> None:
    with_data = _explain("open", GMAIL_PROXY, GOOGLE_IP, after=3600)
    without_data = _explain("open", GMAIL_PROXY, "203.0.113.9", after=3600)
    assert (with_data.label, with_data.certainty) == (L.IMAGE_PROXY, "high")
    assert (without_data.label, without_data.certainty) == (L.IMAGE_PROXY, "medium")


def test_gmail_proxy_agent_from_someone_elses_network_is_a_scanner() -> None:
    assert _explain("open", GMAIL_PROXY, MICROSOFT_IP, after=3600).label == L.SCANNER


def test_bare_agent_from_apples_ranges_is_mpp_with_high_certainty() -> None:
    for ip in (APPLE_IP, "2001:db8:a::5", "::ffff:192.0.2.10"):
        verdict = _explain("open", "Mozilla/5.0", ip, after=3600)
        assert (verdict.label, verdict.certainty) == (L.APPLE_MPP, "high")
        assert "Apple's published network ranges" in verdict.reason


def test_bare_agent_without_network_data_is_mpp_with_lower_certainty() -> None:
    for networks in (NETWORKS, NetworkMap()):
        verdict = explain_hit("open", "Mozilla/5.0", "203.0.113.9", 3600, False, networks, POLICY)
        assert (verdict.label, verdict.certainty) == (L.APPLE_MPP, "medium")
    assert _explain("open", "Mozilla/5.0", None).certainty == "medium"


def test_apple_mail_agent_from_apples_ranges_is_mpp_but_a_person_elsewhere() -> None:
    assert _explain("open", APPLE_MAIL_MAC, APPLE_IP, after=3600).label == L.APPLE_MPP
    assert _explain("open", APPLE_MAIL_MAC, "203.0.113.9", after=3600).label == L.HUMAN
    assert _explain("open", APPLE_MAIL_MAC, None, after=3600).label == L.HUMAN


def test_a_browser_through_icloud_private_relay_is_a_person() -> None:
    verdict = _explain("click", SAFARI_IOS, APPLE_IP, after=3600)
    assert verdict.label == L.HUMAN
    assert "iCloud Private Relay" in verdict.reason


def test_a_click_with_the_bare_agent_is_not_mpp() -> None:
    assert _explain("click", "Mozilla/5.0", APPLE_IP, after=3600).label == L.SCANNER


def test_explain_hit_uses_the_shipped_lists() -> None:
    networks = NetworkMap.load()
    verdict = explain_hit("open", "Mozilla/5.0", "17.58.100.1", None, False, networks, POLICY)
    assert (verdict.label, verdict.certainty) == (L.APPLE_MPP, "high")
    verdict = explain_hit("open", CHROME, "205.139.110.61", 3600, False, networks, POLICY)
    assert verdict.label == L.SCANNER
    assert "Mimecast" in verdict.reason
    assert explain_hit("click", CHROME, None, 3600, True, networks, POLICY).label == L.PREFETCH


# --- precedence ----------------------------------------------------------------------

BURST_PRIOR = (
    PriorHit(kind="click", link_position=1, source_key="k", seconds_before=1.0, label=L.HUMAN),
    PriorHit(kind="click", link_position=2, source_key="k", seconds_before=2.0, label=L.BURST),
)


def test_self_beats_everything() -> None:
    verdict = classify_hit(
        _hit(
            "click",
            "curl/8.5.0",
            network="mimecast",
            is_head=True,
            prefetch_hint="sec-purpose: prefetch",
            seconds_after_send=0.5,
            viewer_is_sender=True,
            link_position=3,
            source_key="k",
        ),
        BURST_PRIOR,
    )
    assert (verdict.label, verdict.certainty) == (L.SELF, "high")
    assert "your own signed-in browser" in verdict.reason


@pytest.mark.parametrize(
    "fields",
    [
        {"is_head": True},
        {"prefetch_hint": "prefetch"},
        {"prefetch_hint": "sec-purpose: prefetch;prerender"},
        {"prefetch_hint": "Purpose: prefetch"},
        {"prefetch_hint": "x-moz: prefetch"},
        {"prefetch_hint": "X-Purpose: preview"},
    ],
)
def test_prefetch_beats_scanners_networks_mpp_and_timing(fields: dict[str, object]) -> None:
    for agent, network in [
        ("curl/8.5.0", None),
        (CHROME, "mimecast"),
        ("Mozilla/5.0", "apple"),
        (THUNDERBIRD, None),
    ]:
        verdict = classify_hit(
            _hit(
                "click",
                agent,
                network=network,
                seconds_after_send=0.1,
                link_position=3,
                source_key="k",
                **fields,
            ),
            BURST_PRIOR,
        )
        assert verdict.label == L.PREFETCH, verdict.reason


def test_gmail_prefetcher_is_prefetch_even_from_a_gateway() -> None:
    assert classify_hit(_hit("open", GMAIL_PREFETCHER, network="proofpoint")).label == L.PREFETCH


def test_an_unrelated_purpose_header_is_not_prefetch() -> None:
    assert (
        classify_hit(_hit("open", THUNDERBIRD, prefetch_hint="purpose: reading")).label == L.HUMAN
    )
    assert classify_hit(_hit("open", THUNDERBIRD, prefetch_hint="  ")).label == L.HUMAN


def test_scanner_and_link_preview_beat_apple_mpp() -> None:
    assert classify_hit(_hit("open", "Mozilla/5.0", network="mimecast")).label == L.SCANNER
    assert classify_hit(_hit("open", "Mozilla/5.0", network="google")).label == L.SCANNER
    assert classify_hit(_hit("open", "Slackbot 1.0", network="apple")).label == L.LINK_PREVIEW
    assert classify_hit(_hit("open", "curl/8.5.0", network="apple")).label == L.SCANNER


def test_apple_mpp_beats_too_fast() -> None:
    # MPP fetches at delivery; "too fast" would hide why.
    verdict = classify_hit(_hit("open", "Mozilla/5.0", network="apple", seconds_after_send=1))
    assert verdict.label == L.APPLE_MPP


def test_machines_keep_their_label_when_also_too_fast() -> None:
    verdict = classify_hit(_hit("click", "python-requests/2.32.3", seconds_after_send=0.5))
    assert verdict.label == L.SCANNER


def test_too_fast_beats_burst_and_duplicate() -> None:
    verdict = classify_hit(
        _hit("click", CHROME, seconds_after_send=2, link_position=3, source_key="k"), BURST_PRIOR
    )
    assert (verdict.label, verdict.certainty) == (L.TOO_FAST, "medium")
    assert "2.0 s after sending" in verdict.reason


def test_burst_beats_duplicate() -> None:
    prior = (
        *BURST_PRIOR,
        PriorHit(kind="click", link_position=3, source_key="k", seconds_before=0.5, label=L.HUMAN),
    )
    verdict = classify_hit(
        _hit("click", CHROME, seconds_after_send=60, link_position=3, source_key="k"), prior
    )
    assert verdict.label == L.BURST


def test_timing_applies_to_image_proxies_too() -> None:
    assert classify_hit(_hit("open", GMAIL_PROXY, seconds_after_send=1)).label == L.TOO_FAST
    prior = (
        PriorHit(
            kind="open", link_position=None, source_key="g", seconds_before=2, label=L.IMAGE_PROXY
        ),
    )
    verdict = classify_hit(_hit("open", GMAIL_PROXY, seconds_after_send=90, source_key="g"), prior)
    assert verdict.label == L.DUPLICATE


# --- too_fast ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "limit", "label"),
    [
        (0.0, 5.0, L.TOO_FAST),
        (4.9, 5.0, L.TOO_FAST),
        (5.0, 5.0, L.HUMAN),
        (2.0, 1.0, L.HUMAN),
        (2.0, 30.0, L.TOO_FAST),
        (-3.0, 5.0, L.TOO_FAST),  # clocks of two machines disagreeing: still within the limit
        (None, 5.0, L.HUMAN),  # unknown sending time: no timing verdict
        (float("nan"), 5.0, L.HUMAN),
    ],
)
def test_too_fast_uses_the_configured_limit(
    after: float | None, limit: float, label: EventLabel
) -> None:
    verdict = classify_hit(
        _hit("open", THUNDERBIRD, seconds_after_send=after), policy=Policy(too_fast_seconds=limit)
    )
    assert verdict.label == label, verdict.reason


# --- burst ---------------------------------------------------------------------------


def _click(position: int | None, before: float, key: str = "k", kind: str = "click") -> PriorHit:
    return PriorHit(
        kind=kind, link_position=position, source_key=key, seconds_before=before, label=L.HUMAN
    )


def _classify_click(
    prior: tuple[PriorHit, ...], position: int | None = 3, policy: Policy = POLICY
) -> Verdict:
    return classify_hit(
        _hit("click", CHROME, seconds_after_send=600, link_position=position, source_key="k"),
        prior,
        policy,
    )


def test_two_links_within_seconds_from_one_source_are_a_burst() -> None:
    verdict = _classify_click((_click(1, 1.5),))
    assert (verdict.label, verdict.certainty) == (L.BURST, "medium")
    assert "2 different links" in verdict.reason
    three = _classify_click((_click(1, 1.5), _click(2, 3.0)))
    assert (three.label, three.certainty) == (L.BURST, "high")


@pytest.mark.parametrize(
    "prior",
    [
        (_click(1, 1.5, key="other source"),),
        (_click(1, 30.0),),
        (_click(1, -1.0),),  # "before" a hit that has not happened yet: ignored
        (_click(None, 1.0),),
        (_click(1, 1.0, kind="open"),),
    ],
)
def test_no_burst_without_distinct_recent_links_from_the_same_source(
    prior: tuple[PriorHit, ...],
) -> None:
    assert _classify_click(prior).label == L.HUMAN


def test_burst_thresholds_are_configurable() -> None:
    policy = Policy(burst_links=3, burst_seconds=2.0)
    assert _classify_click((_click(1, 1.0),), policy=policy).label == L.HUMAN
    assert _classify_click((_click(1, 1.0), _click(2, 1.9)), policy=policy).label == L.BURST
    assert _classify_click((_click(1, 1.0), _click(2, 2.5)), policy=policy).label == L.HUMAN


def test_opens_and_position_less_clicks_never_burst() -> None:
    assert _classify_click((_click(1, 1.0),), position=None).label == L.HUMAN
    verdict = classify_hit(
        _hit("open", THUNDERBIRD, seconds_after_send=600, source_key="k"), (_click(1, 1.0),)
    )
    assert verdict.label == L.HUMAN


def test_an_empty_source_key_matches_nothing() -> None:
    prior = (_click(1, 1.0, key=""), _click(3, 1.0, key=""))
    verdict = classify_hit(
        _hit("click", CHROME, seconds_after_send=600, link_position=3, source_key=""), prior
    )
    assert verdict.label == L.HUMAN


# --- duplicate -----------------------------------------------------------------------


def test_the_same_click_repeated_from_the_same_source_is_a_duplicate() -> None:
    verdict = _classify_click((_click(3, 4.0), _click(3, 8.0)))
    assert (verdict.label, verdict.certainty) == (L.DUPLICATE, "high")
    assert "4.0 s earlier" in verdict.reason


@pytest.mark.parametrize(
    "prior",
    [(_click(3, 11.0),), (_click(3, 4.0, key="other source"),), (_click(3, 4.0, kind="open"),)],
)
def test_no_duplicate_when_old_from_elsewhere_or_of_another_kind(
    prior: tuple[PriorHit, ...],
) -> None:
    assert _classify_click(prior).label == L.HUMAN


def test_a_repeated_open_is_a_duplicate_within_the_window_only() -> None:
    def open_after(before: float) -> Verdict:
        prior = (
            PriorHit(
                kind="open",
                link_position=None,
                source_key="k",
                seconds_before=before,
                label=L.HUMAN,
            ),
        )
        return classify_hit(
            _hit("open", THUNDERBIRD, seconds_after_send=600, source_key="k"),
            prior,
            Policy(duplicate_seconds=10),
        )

    assert open_after(3).label == L.DUPLICATE
    assert open_after(10).label == L.DUPLICATE
    assert open_after(10.5).label == L.HUMAN


def test_another_link_without_a_burst_is_neither_burst_nor_duplicate() -> None:
    verdict = _classify_click((_click(1, 1.0),), policy=Policy(burst_links=3))
    assert verdict.label == L.HUMAN


# --- robustness ----------------------------------------------------------------------

_TEXT = st.text(max_size=300)
_FLOATS = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=300, deadline=None)
@given(
    kind=st.one_of(st.sampled_from(["open", "click"]), _TEXT),
    user_agent=st.one_of(_TEXT, st.sampled_from([CHROME, GMAIL_PROXY, "Mozilla/5.0", ""])),
    network=st.one_of(st.none(), st.sampled_from(["apple", "google", "mimecast", "x"]), _TEXT),
    is_head=st.booleans(),
    prefetch_hint=st.one_of(st.none(), _TEXT),
    seconds_after_send=_FLOATS,
    viewer_is_sender=st.booleans(),
    link_position=st.one_of(st.none(), st.integers()),
    source_key=st.one_of(st.just("k"), _TEXT),
    prior=st.lists(
        st.builds(
            PriorHit,
            kind=st.one_of(st.sampled_from(["open", "click"]), _TEXT),
            link_position=st.one_of(st.none(), st.integers(min_value=-2, max_value=5)),
            source_key=st.one_of(st.just("k"), _TEXT),
            seconds_before=st.floats(allow_nan=True, allow_infinity=True),
            label=st.sampled_from(list(EventLabel)),
        ),
        max_size=8,
    ),
)
def test_classify_hit_never_crashes(
    kind: str,
    user_agent: str,
    network: str | None,
    is_head: bool,
    prefetch_hint: str | None,
    seconds_after_send: float | None,
    viewer_is_sender: bool,
    link_position: int | None,
    source_key: str,
    prior: list[PriorHit],
) -> None:
    signals = HitSignals(
        kind=kind,
        user_agent=user_agent,
        network=network,
        is_head=is_head,
        prefetch_hint=prefetch_hint,
        seconds_after_send=seconds_after_send,
        viewer_is_sender=viewer_is_sender,
        link_position=link_position,
        source_key=source_key,
    )
    verdict = classify_hit(signals, prior)
    assert verdict.label in set(EventLabel)
    assert 0 < len(verdict.reason) <= MAX_REASON_CHARS
    assert verdict.certainty in {"high", "medium", "low"}


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=2000))
def test_identify_agent_never_crashes(agent: str) -> None:
    found = identify_agent(agent)
    assert found.kind in set(AgentKind)
    assert found.name
    assert len(found.detail) < MAX_REASON_CHARS
