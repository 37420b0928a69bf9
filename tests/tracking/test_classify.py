"""The hit classifier: shared fixture agents, held-out agents, precedence, timing, networks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailbeacon.models.event import EventLabel
from mailbeacon.tracking.classify import (
    MAX_REASON_CHARS,
    AgentKind,
    HitSignals,
    Policy,
    PriorHit,
    Verdict,
    classify_hit,
    explain_hit,
    identify_agent,
)
from mailbeacon.tracking.networks import NetworkMap

FIXTURE = Path(__file__).parents[3] / "shared" / "fixtures" / "user_agents.tsv"

L = EventLabel

# What each fixture category must come out as, per kind of hit. Image proxies and
# Apple's MPP proxy only ever load images, so a "click" from them is software
# following the link: a scanner.
EXPECTED = {
    "human_browser": {"open": L.HUMAN, "click": L.HUMAN},
    "human_mail_client": {"open": L.HUMAN, "click": L.HUMAN},
    "apple_mpp": {"open": L.APPLE_MPP, "click": L.SCANNER},
    "gmail_proxy": {"open": L.IMAGE_PROXY, "click": L.SCANNER},
    "yahoo_proxy": {"open": L.IMAGE_PROXY, "click": L.SCANNER},
    "gmail_prefetch": {"open": L.PREFETCH, "click": L.PREFETCH},
    "outlook_proxy": {"open": L.LINK_PREVIEW, "click": L.LINK_PREVIEW},
    "security_scanner": {"open": L.SCANNER, "click": L.SCANNER},
    "link_preview": {"open": L.LINK_PREVIEW, "click": L.LINK_PREVIEW},
}


def _fixture_rows() -> list[tuple[str, str]]:
    if not FIXTURE.exists():
        return []
    with FIXTURE.open(encoding="utf-8", newline="") as fh:
        return [(row["category"], row["user_agent"]) for row in csv.DictReader(fh, delimiter="\t")]


FIXTURE_ROWS = _fixture_rows()
needs_fixture = pytest.mark.skipif(
    not FIXTURE_ROWS,
    reason=f"shared fixture {FIXTURE} is missing (it lives in shared/ beside the repository)",
)


def _hit(kind: str = "open", user_agent: str = "", **fields: Any) -> HitSignals:
    return HitSignals(kind=kind, user_agent=user_agent, **fields)


CHROME = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/124.0.0.0 Safari/537.36"
)
SAFARI_IOS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
)
APPLE_MAIL_MAC = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko)"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
GMAIL_PREFETCHER = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Mozilla/5.0"
)
THUNDERBIRD = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"


# --- the shared fixture ------------------------------------------------------------


@needs_fixture
@pytest.mark.parametrize("kind", ["open", "click"])
@pytest.mark.parametrize(
    ("category", "agent"),
    FIXTURE_ROWS or [("missing", "")],
    ids=[f"{c}:{a[:50]}" for c, a in FIXTURE_ROWS] or ["missing"],
)
def test_fixture_agents_get_their_category(category: str, agent: str, kind: str) -> None:
    assert category in EXPECTED, f"new fixture category {category!r}: teach EXPECTED about it"
    verdict = classify_hit(_hit(kind, agent))
    assert verdict.label == EXPECTED[category][kind], verdict.reason


@needs_fixture
def test_fixture_covers_every_category() -> None:
    assert {category for category, _ in FIXTURE_ROWS} == set(EXPECTED)


# --- held-out agents (not in the fixture) -----------------------------------------
# Real agents of current browsers and mail apps, so the tables are checked on
# families rather than on the fixture's exact strings. Electron desktop apps
# (Spark, Superhuman) are shown in their documented Electron shape.

HELD_OUT_PEOPLE = [
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) CriOS/126.0.6478.54 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (X11; CrOS x86_64 14541.0.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36"
    ),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:127.0) Gecko/20100101 Firefox/127.0",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
    "Mozilla/5.0 (Android 14; Mobile; rv:127.0) Gecko/127.0 Firefox/127.0",
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) FxiOS/127.0 Mobile/15E148 Safari/605.1.15"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0"
    ),
    (
        "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/125.0.0.0 Mobile Safari/537.36 EdgA/125.0.0.0"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.0 EdgiOS/126.2592.56 Mobile/15E148 Safari/605.1.15"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Safari/605.1.15"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/17.5 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Version/18.0 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Version/17.5 Mobile/15E148 Safari/604.1"
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SAMSUNG SM-S918B) AppleWebKit/537.36 (KHTML, like Gecko) "
        "SamsungBrowser/25.0 Chrome/121.0.0.0 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/124.0.0.0 Safari/537.36 OPR/110.0.0.0"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Vivaldi/6.8.3381.44"
    ),
    # A security vendor's *browser* is a person's browser.
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Avast/126.0.0.0"
    ),
    # Cubot is a phone maker: "CUBOT" must not read as "bot".
    (
        "Mozilla/5.0 (Linux; Android 12; CUBOT KINGKONG 7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.6099.230 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Mobile/15E148 Instagram 337.0.3.23.54 (iPhone15,2; iOS 17_5; en_US; en; "
        "scale=3.00; 1179x2556; 619451016)"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Mobile/15E148 [LinkedInApp]/9.29.8953"
    ),
    # Thunderbird 115 / 128
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64; rv:115.0) Gecko/20100101 Thunderbird/115.12.2",
    "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.15; rv:128.0) Gecko/20100101 Thunderbird/128.1.0",
    # Outlook: classic Windows (both agent shapes), new Outlook (WebView2), Mac, iOS, Android
    (
        "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/7.0; .NET4.0C; "
        ".NET4.0E; .NET CLR 2.0.50727; .NET CLR 3.0.30729; .NET CLR 3.5.30729; Microsoft Outlook "
        "16.0.9126; Microsoft Outlook 16.0.9126; ms-office; MSOffice 16)"
    ),
    "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17726; Pro)",
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/126.0.0.0 Safari/537.36 Edg/126.0.0.0"
    ),
    "MacOutlook/16.87.24071426 (Intelx64 Mac OS X 14.5 (Build 23F79))",
    "Outlook-iOS/723.4027091.prod.iphone (4.2407.0)",
    "Outlook-Android/2.0",
    # Apple Mail: iOS 17 and 18, iPadOS, macOS (no Safari token)
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, "
        "like Gecko) Mobile/15E148"
    ),
    (
        "Mozilla/5.0 (iPhone; CPU iPhone OS 18_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
        "Gecko) Mobile/15E148"
    ),
    (
        "Mozilla/5.0 (iPad; CPU OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
        "Mobile/15E148"
    ),
    "Mail/3774.600.62 CFNetwork/1496.0.7 Darwin/23.5.0",
    # Android mail apps (Gmail, Samsung Email, K-9 / Thunderbird for Android) show
    # mail in Android System WebView.
    (
        "Mozilla/5.0 (Linux; Android 14; Pixel 8 Pro Build/AP2A.240705.005; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.122 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Linux; Android 14; SM-S921B Build/UP1A.231005.007; wv) AppleWebKit/537.36 "
        "(KHTML, like Gecko) Version/4.0 Chrome/125.0.6422.165 Mobile Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Linux; Android 13; moto g(60) Build/T1RDS33.116-33-15-5; wv) "
        "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/126.0.6478.71 Mobile "
        "Safari/537.36"
    ),
    "Dalvik/2.1.0 (Linux; U; Android 14; Pixel 8 Build/AP1A.240505.005)",
    # Desktop mail apps
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Spark/3.12.1 Chrome/118.0.5993.159 Electron/27.1.2 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Superhuman Chrome/120.0.6099.291 Electron/28.3.3 Safari/537.36"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/70.0.3538.102 Safari/537.36 Edge/18.19045"
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/120.0.0.0 Safari/537.36 eM Client/10.0.3530.0"
    ),
]

HELD_OUT_MACHINES = [
    # crawlers
    ("Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)", L.SCANNER),
    (
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 (KHTML, "
            "like Gecko) Chrome/126.0.6478.126 Mobile Safari/537.36 (compatible; Googlebot/2.1; "
            "+http://www.google.com/bot.html)"
        ),
        L.SCANNER,
    ),
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", L.SCANNER),
    (
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; bingbot/2.0; "
            "+http://www.bing.com/bingbot.htm) Chrome/116.0.1938.76 Safari/537.36"
        ),
        L.SCANNER,
    ),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_5) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) Version/13.1.1 Safari/605.1.15 (Applebot/0.1; "
            "+http://www.apple.com/go/applebot)"
        ),
        L.SCANNER,
    ),
    (
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; GPTBot/1.2; "
            "+https://openai.com/gptbot)"
        ),
        L.SCANNER,
    ),
    ("Mozilla/5.0 (compatible; AhrefsBot/7.0; +http://ahrefs.com/robot/)", L.SCANNER),
    ("Mozilla/5.0 (compatible; SemrushBot/7~bl; +http://www.semrush.com/bot.html)", L.SCANNER),
    ("Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)", L.SCANNER),
    (
        "Mozilla/5.0 (compatible; Yahoo! Slurp; http://help.yahoo.com/help/us/ysearch/slurp)",
        L.SCANNER,
    ),
    # HTTP libraries and automation
    ("curl/8.5.0", L.SCANNER),
    ("python-requests/2.32.3", L.SCANNER),
    ("Python-urllib/3.11", L.SCANNER),
    ("Python/3.12 aiohttp/3.9.5", L.SCANNER),
    ("Go-http-client/1.1", L.SCANNER),
    ("Go-http-client/2.0", L.SCANNER),
    ("Java/17.0.11", L.SCANNER),
    ("Apache-HttpClient/4.5.14 (Java/17.0.2)", L.SCANNER),
    ("okhttp/4.12.0", L.SCANNER),
    ("Wget/1.21.4", L.SCANNER),
    ("libwww-perl/6.77", L.SCANNER),
    ("node-fetch/1.0 (+https://github.com/bitinn/node-fetch)", L.SCANNER),
    ("axios/1.7.2", L.SCANNER),
    ("GuzzleHttp/7", L.SCANNER),
    ("Scrapy/2.11.2 (+https://scrapy.org)", L.SCANNER),
    (
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "HeadlessChrome/126.0.6478.126 Safari/537.36"
        ),
        L.SCANNER,
    ),
    (
        "Mozilla/5.0 (Windows NT 10.0; Microsoft Windows 10.0.19045; en-US) PowerShell/7.4.2",
        L.SCANNER,
    ),
    ("Dart/3.4 (dart:io)", L.SCANNER),
    ("", L.SCANNER),
    ("   ", L.SCANNER),
    # security products naming themselves
    ("Mozilla/5.0 (compatible; Proofpoint URL Defense)", L.SCANNER),
    ("Mimecast URL Protect", L.SCANNER),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) Barracuda Link Protection", L.SCANNER),
    ("Mozilla/5.0 (compatible; Microsoft Defender for Office 365 Safe Links)", L.SCANNER),
    ("Mozilla/5.0 (compatible; SomeNewCheckService/1.0)", L.SCANNER),
    # link previews
    ("facebookexternalhit/1.1 (+http://www.facebook.com/externalhit_uatext.php)", L.LINK_PREVIEW),
    ("Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", L.LINK_PREVIEW),
    ("Slackbot 1.0 (+https://api.slack.com/robots)", L.LINK_PREVIEW),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like "
            "Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0"
        ),
        L.LINK_PREVIEW,
    ),
    ("WhatsApp/2.23.20.0 A", L.LINK_PREVIEW),
    (
        (
            "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5 "
            "skype-url-preview@microsoft.com"
        ),
        L.LINK_PREVIEW,
    ),
    (
        "Mozilla/5.0 (compatible; Pinterestbot/1.0; +http://www.pinterest.com/bot.html)",
        L.LINK_PREVIEW,
    ),
    ("Microsoft Office Protocol Discovery", L.LINK_PREVIEW),
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Word 16.0.17726; Pro)", L.LINK_PREVIEW),
    # Gmail's content sampler, the prefetcher's agent with a suffix
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/42.0.2311.135 Safari/537.36 Edge/12.246 Gmail-content-sampling"
        ),
        L.PREFETCH,
    ),
]


@pytest.mark.parametrize("kind", ["open", "click"])
@pytest.mark.parametrize("agent", HELD_OUT_PEOPLE, ids=[a[:60] for a in HELD_OUT_PEOPLE])
def test_held_out_people_are_human(agent: str, kind: str) -> None:
    verdict = classify_hit(_hit(kind, agent))
    assert verdict.label == L.HUMAN, verdict.reason
    assert identify_agent(agent).is_person


@pytest.mark.parametrize("kind", ["open", "click"])
@pytest.mark.parametrize(
    ("agent", "label"), HELD_OUT_MACHINES, ids=[a[:60] or "empty" for a, _ in HELD_OUT_MACHINES]
)
def test_held_out_machines_are_labelled(agent: str, label: EventLabel, kind: str) -> None:
    verdict = classify_hit(_hit(kind, agent))
    assert verdict.label == label, verdict.reason
    assert not identify_agent(agent).is_person


# --- identify_agent ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "kind", "name", "platform"),
    [
        (THUNDERBIRD, AgentKind.MAIL_CLIENT, "Thunderbird", "Linux"),
        (APPLE_MAIL_MAC, AgentKind.APPLE_MAIL, "Apple Mail", "Mac"),
        (SAFARI_IOS, AgentKind.BROWSER, "Safari", "iPhone"),
        (CHROME, AgentKind.BROWSER, "Chrome", "Windows"),
        ("Mozilla/5.0", AgentKind.BARE, "Mozilla/5.0", None),
        (GMAIL_PROXY, AgentKind.IMAGE_PROXY, "Gmail image proxy (GoogleImageProxy)", None),
        (GMAIL_PREFETCHER, AgentKind.PREFETCHER, "Gmail's prefetcher", None),
        ("Barracuda Sentinel (EE)", AgentKind.SCANNER, "Barracuda", None),
        ("TelegramBot (like TwitterBot)", AgentKind.LINK_PREVIEW, "Telegram", None),
        (
            "Yahoo%20Mail/49268 CFNetwork/1121.2.2 Darwin/19.3.0",
            AgentKind.MAIL_CLIENT,
            "the Yahoo Mail app",
            "an Apple device",
        ),
        (
            "Fancy/1.0 CFNetwork/1496.0.7 Darwin/23.5.0",
            AgentKind.APP,
            "the Fancy app",
            "an Apple device",
        ),
        ("SomethingNew/3.2", AgentKind.UNKNOWN, "a program we do not recognise", None),
    ],
)
def test_identify_agent(agent: str, kind: AgentKind, name: str, platform: str | None) -> None:
    found = identify_agent(agent)
    assert (found.kind, found.name, found.platform) == (kind, name, platform)


def test_identify_agent_is_cached_and_the_operator_of_proxies_is_known() -> None:
    assert identify_agent(GMAIL_PROXY) is identify_agent(GMAIL_PROXY)
    assert identify_agent(GMAIL_PROXY).operator == "google"
    assert (
        identify_agent(
            "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
        ).operator
        == "yahoo"
    )


def test_an_unrecognised_agent_counts_as_a_person_with_low_certainty() -> None:
    verdict = classify_hit(_hit("open", "SomethingNew/3.2"))
    assert (verdict.label, verdict.certainty) == (L.HUMAN, "low")
    assert "nothing marks it as automated" in verdict.reason


def test_human_reasons_name_the_program_and_the_device() -> None:
    assert classify_hit(_hit("open", THUNDERBIRD)).reason == "Opened in Thunderbird on Linux"
    assert classify_hit(_hit("click", SAFARI_IOS)).reason == "Clicked in Safari on iPhone"


def test_image_proxy_reason_is_the_promised_one() -> None:
    verdict = classify_hit(_hit("open", GMAIL_PROXY))
    assert (
        verdict.reason
        == "Gmail image proxy (GoogleImageProxy): a real open, without device or place"
    )


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
