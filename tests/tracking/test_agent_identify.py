"""User-Agents on their own: the shared fixture, held-out real agents, identify_agent."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from mailbeacon.models.event import EventLabel
from mailbeacon.tracking.agents import AgentKind, identify_agent
from mailbeacon.tracking.classify import (
    HitSignals,
    classify_hit,
)
from tests.tracking.agent_strings import (
    APPLE_MAIL_MAC,
    CHROME,
    GMAIL_PREFETCHER,
    GMAIL_PROXY,
    SAFARI_IOS,
    THUNDERBIRD,
)

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
