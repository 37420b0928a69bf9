"""Agents of machines: image proxies, prefetchers, link previewers, security scanners, tools.

Every entry names where a real agent string of its family was published; the
abbreviations below are spelled out, with the commit read, in SOURCES.md beside
this file, and tests/tracking/test_agent_tables.py checks each entry against
that real string. Entries marked "name only" predate the sourcing and match a
vendor's name in case it ever appears; no public sample of them was found.
"""

from __future__ import annotations

import re

from mailbeacon.tracking.agents.matching import Entry, compile_table

DD = "matomo-org/device-detector Tests/fixtures/bots.yml"
DD_APPS = "matomo-org/device-detector Tests/Parser/Client/fixtures/mobile_app.yml"
CUA = "monperrus/crawler-user-agents crawler-user-agents.json"
CD = "JayBizzle/Crawler-Detect tests/data/user_agent/crawlers.txt"
ISBOT = "omrilotan/isbot fixtures/crawlers.yml"
ISBOT_UAN = "omrilotan/isbot fixtures/downloaded/user-agents.net.json"
UAPJS = "faisalman/ua-parser-js test/data/ua/extension/fetcher.json"
UAPCORE = "ua-parser/uap-core tests/test_ua.yaml"
FIXTURE = "shared/fixtures/user_agents.tsv"
NAME_ONLY = "name only"

BARE_MOZILLA = re.compile(r"mozilla/5\.0")

# Gmail prefetches images (and samples links) with a frozen 2015 Chrome 42 /
# Edge 12 agent; no person has run that browser for years.
GMAIL_PREFETCH = re.compile(
    r"gmail-content-sampling|chrome/42\.0\.2311\.\d+ safari/537\.36 edge/12\.\d+"
)

# Proxies that load a message's images when a person opens it: an open without
# device or place. The operator is the network list their addresses are in.
IMAGE_PROXIES = compile_table(
    [
        Entry(
            "gmail",
            r"googleimageproxy|via ggpht\.com",
            "Gmail image proxy (GoogleImageProxy)",
            f"{FIXTURE}; {DD}",
            operator="google",
        ),
        Entry(
            "yahoo",
            r"yahoomailproxy",
            "Yahoo Mail image proxy (YahooMailProxy)",
            f"{FIXTURE}; {CUA}",
            operator="yahoo",
        ),
        Entry("seznam", r"seznamemailproxy", "Seznam Email image proxy", DD),
        Entry("rambler", r"ramblermail/", "Rambler Mail image proxy", DD),
        # Shortwave is a mail app on top of Gmail; it fetches a message's images
        # for the reader (crawler-user-agents: "Email client image proxy").
        Entry("shortwave", r"shortwave image fetcher", "Shortwave image proxy", CUA),
    ]
)

# Services that fetch a link (or an image) to draw a preview where it was pasted
# or shown: a hit from them means the link travelled, not that the recipient
# clicked. Desktop apps of the same vendors (Slack/, Discord/, Teams/ in an
# Electron agent) are people and deliberately not matched.
LINK_PREVIEWS = compile_table(
    [
        Entry("microsoftpreview", r"microsoftpreview", "Microsoft (Outlook, Teams)", FIXTURE),
        # Office apps check a link before handing it to the browser; the browser
        # visit that follows is counted on its own.
        Entry(
            "office_check",
            r"microsoft office (?:existence|protocol) discovery"
            r"|microsoft data access internet publishing|microsoft-webdav-miniredir"
            # The year form of Windows Office ("Microsoft Office Word 2013"); Office
            # for Mac and iOS write "Microsoft Office Word/16.x (Mac OS/...)" and
            # are left to the people's tables, as device-detector lists them as apps.
            r"|microsoft office (?:word|excel|powerpoint|onenote|visio|publisher|access|project)"
            r" 20\d\d"
            r"|microsoft office/[\d.]+ \([^)]*microsoft (?:word|excel|powerpoint|onenote|visio"
            r"|publisher|access|project)",
            "Microsoft Office's link check",
            f"{FIXTURE}; {CD} (Microsoft Office Word 2013, Microsoft-WebDAV-MiniRedir)",
        ),
        # Teams still fetches previews as SkypeUriPreview
        # (https://opengraphplus.com/consumers/teams/crawling).
        Entry("skype", r"skypeuripreview", "Skype / Teams", f"{FIXTURE}; {DD}"),
        Entry("bing", r"bingpreview", "Bing", FIXTURE),
        # Apple Messages' LinkPresentation announces itself as Facebook and
        # Twitter's bots behind an old Safari (https://peter.upfold.org.uk/blog/2019/02).
        Entry(
            "imessage",
            r"facebookexternalhit/1\.1 facebot twitterbot/1\.0",
            "Apple Messages",
            "https://peter.upfold.org.uk/blog/2019/02",
        ),
        Entry("google_messages", r"googlemessages", "Google Messages", f"{CD}; {ISBOT}"),
        Entry("slack", r"slackbot|slack-imgproxy", "Slack", f"{FIXTURE}; {CUA}"),
        Entry("linkedin", r"linkedinbot", "LinkedIn", f"{FIXTURE}; {CUA}"),
        Entry("xing", r"xing bot", "XING", CUA),
        Entry("telegram", r"telegrambot", "Telegram", FIXTURE),
        # The WhatsApp app (and its modified builds, which device-detector lists
        # as GBWhatsApp, YoWhatsApp...) fetches a pasted link itself; Signal
        # borrows the same "WhatsApp/2" agent (device-detector mobile_app.yml).
        Entry(
            "whatsapp",
            r"^[a-z0-9]*whatsapp[a-z0-9]*(?:/|$)",
            "WhatsApp",
            f"{FIXTURE}; {CUA} (bare 'WhatsApp'); {DD_APPS}",
        ),
        Entry("viber", r"viberurldownloader|^viber$", "Viber", f"{DD}; {CUA}"),
        # Discord's embed proxy fetches with a frozen Firefox 38 agent
        # (https://github.com/discord/discord-api-docs/issues/3872).
        Entry(
            "discord",
            r"discordbot|intel mac os x 10\.10; rv:38\.0\) gecko/20100101 firefox/38\.0$",
            "Discord",
            f"{DD}; https://github.com/discord/discord-api-docs/issues/3872",
        ),
        Entry("steam", r"steamchaturllookup", "Steam chat", f"{DD}; {CUA}"),
        Entry("zoom", r"\(zoom\.mac\b", "Zoom", f"{CD} (Mozilla/5.0 (Zoom.Mac 10.8.5 x86))"),
        # Keybase (Zoom) fetches links for chat previews: book.keybase.io/docs/chat/link-previews.
        Entry("keybase", r"keybasebot", "Keybase", f"{DD}; {CUA}"),
        Entry(
            "facebook",
            r"facebookexternal\w*|facebot|facebook(?:catalog|platform|scraper)|meta-external\w+",
            "Facebook / Meta",
            f"{DD}; {CUA}; {ISBOT}",
        ),
        Entry("twitter", r"twitterbot", "X (Twitter)", FIXTURE),
        Entry("snapchat", r"snap ?url ?preview", "Snapchat", f"{DD}; {CUA}"),
        Entry("bluesky", r"bluesky cardyb|blueskypreviewbot", "Bluesky", f"{DD}; {UAPJS}; {CUA}"),
        Entry("mastodon", r"\(mastodon/", "Mastodon", DD),
        Entry("matrix", r"^synapse \(bot", "Matrix (Synapse)", CUA),
        Entry("mattermost", r"mattermost-bot", "Mattermost", FIXTURE),
        Entry("dingtalk", r"dingtalkbot-linkservice", "DingTalk", CUA),
        Entry("groupme", r"groupmebot", "GroupMe", CUA),
        Entry("discourse", r"discourse forum onebox", "Discourse", CUA),
        Entry("notion", r"notionembedder|^notion/", "Notion", f"{CD}; {CUA}"),
        Entry("iframely", r"iframely", "Iframely (link embeds)", FIXTURE),
        Entry("embedly", r"embedly", "Embedly (link embeds)", CUA),
        Entry("pinterest", r"pinterestbot", "Pinterest", CUA),
        Entry("reddit", r"redditbot", "Reddit", DD),
        Entry("vk", r"vkshare", "VK", FIXTURE),
        Entry("skypebot", r"skypebot", "Skype", NAME_ONLY),
        Entry("google_chat", r"google-hangouts|googlechat", "Google Chat", NAME_ONLY),
        Entry("quora", r"quora link preview", "Quora", FIXTURE),
        Entry(
            "yahoo_preview",
            r"yahoo link preview|yahoo:linkexpander|yahoocachesystem",
            "Yahoo Mail",
            f"{FIXTURE}; {DD} (Yahoo:LinkExpander:Slingstone); {CUA} (YahooCacheSystem)",
        ),
        Entry(
            "generic_preview",
            r"preview|unfurl|link ?expander|url ?expander",
            "a link preview service",
            f"{DD} (Chatwork LinkPreview); {CD} (WakeletLinkExpander, SMUrlExpander);"
            f" {CUA} (ClickUpLinkUnfurler)",
        ),
    ]
)

# Email security products, link checkers and Internet scanners, by name. Browser
# brands of security vendors (Avast/, AVG/, Norton/, Avira/ secure browsers,
# F-Secure's FSCDCSafe) are people's browsers and deliberately absent.
SECURITY = compile_table(
    [
        Entry("barracuda", r"barracuda", "Barracuda", f"{FIXTURE}; {DD}"),
        Entry("mimecast", r"mimecast", "Mimecast", NAME_ONLY),
        Entry("proofpoint", r"proofpoint|urldefense|pphosted", "Proofpoint", NAME_ONLY),
        Entry("safelinks", r"safe[ -]?links", "Microsoft Defender Safe Links", NAME_ONLY),
        Entry("exchange_check", r"\(exchange check\)", "Microsoft Exchange", DD),
        Entry("google_safety", r"google-safety", "Google Safety (abuse and malware checks)", DD),
        Entry("kaspersky", r"kaspersky|cfr link resolver", "Kaspersky", f"{FIXTURE}; {DD}"),
        Entry("bitdefender", r"bitdefender", "Bitdefender", NAME_ONLY),
        Entry("trendmicro", r"trend ?micro", "Trend Micro", NAME_ONLY),
        Entry("sophos", r"sophos", "Sophos", UAPCORE),
        Entry("norton", r"norton-safeweb", "Norton Safe Web", CD),
        Entry(
            "symantec",
            r"symantec|messagelabs|blue ?coat",
            "Symantec (Blue Coat)",
            f"{ISBOT_UAN} (Bluecoat DRTR)",
        ),
        Entry("forcepoint", r"forcepoint|websense", "Forcepoint", NAME_ONLY),
        Entry("fortinet", r"fortinet|fortiguard", "Fortinet", NAME_ONLY),
        Entry("checkpoint", r"check ?point|avanan", "Check Point", NAME_ONLY),
        Entry("cisco", r"ironport|cisco secure", "Cisco Secure Email", NAME_ONLY),
        Entry("zscaler", r"zscaler", "Zscaler", NAME_ONLY),
        Entry("paloalto", r"palo ?alto networks|expanse", "Palo Alto Networks", DD),
        Entry("alibaba", r"alibaba\.security", "Alibaba Cloud security", CD),
        # ukr.net's mail service checks links through its secureurl proxy.
        Entry("ukrnet", r"secureurl\.fwdcdn\.com", "ukr.net mail's link check", DD),
        Entry("virustotal", r"virustotal", "VirusTotal", f"{CUA}; {DD}"),
        Entry("urlscan", r"urlscan", "urlscan.io", NAME_ONLY),
        Entry("scamadviser", r"scamadviser", "Scamadviser", DD),
        Entry("netcraft", r"netcraft", "Netcraft", NAME_ONLY),
        Entry("censys", r"censys", "Censys", FIXTURE),
        Entry("bitsight", r"bitsight", "BitSight", FIXTURE),
        Entry("xforce", r"x-?force", "IBM X-Force", FIXTURE),
        Entry("safedns", r"safedns", "SafeDNS", FIXTURE),
        Entry("yandex_av", r"yandexantivirus", "Yandex Antivirus", FIXTURE),
        Entry("genieo", r"genieo", "Genieo web filter", FIXTURE),
        Entry("leakix", r"leakix|l9(?:scan|explore|tcpid)|lkx-", "LeakIX", f"{FIXTURE}; {DD}"),
        Entry("zgrab", r"zgrab", "ZGrab", FIXTURE),
        # Sending services follow the links of what they relay to vet them
        # (crawler-user-agents: "Email service crawler scanning links in messages").
        Entry("esp_check", r"sendgrid event api|^sparkpost$", "the sending service", CUA),
        # Log4Shell probes put the exploit in the agent itself.
        Entry("log4shell_probe", r"\$\{jndi:", "a vulnerability probe", DD),
        Entry(
            "internet_scanner",
            r"masscan|nmap|nessus|qualys|nuclei|acunetix|netsparker|shodan|arachni|nikto"
            r"|openvas|wpscan|sqlmap|gobuster|whatweb|zmeu",
            "an Internet security scanner",
            f"{DD} (Nmap Scripting Engine, Arachni, gobuster, ZmEu); {CUA} (Nikto, OpenVAS,"
            f" WhatWeb, sqlmap); {CD} (WPScan)",
        ),
        Entry(
            "security_generic",
            r"anti-?virus|web ?filter|url ?filter|url ?protect|sandbox|phish"
            r"|link[ -]?(?:resolver|protect|scan|check|analy[sz]er)",
            "a security filter",
            f"{FIXTURE}; {CD} (HubSpot-Link-Resolver, LinkAnalyser/2.0, link-check/5.2.0)",
        ),
    ]
)

# Crawlers and fetchers of large services whose agent carries no robot word:
# none of them is a person opening the email.
SERVICE_FETCHERS = compile_table(
    [
        Entry(
            "google",
            r"googleother|google-extended|googleproducer|google-inspectiontool"
            r"|google-site-verification|google-cws|apis-google|mediapartners-google"
            r"|adsbot-google|storebot-google|google-read-aloud|googleassociationservice",
            "Google's crawlers",
            f"{CUA}; {DD}",
        ),
        Entry("meta_indexer", r"meta-webindexer", "Meta's web indexer", f"{DD}; {CUA}"),
    ]
)

# HTTP libraries and automation tools: scripts, link checkers and gateways use
# them; no person reads email with one. The match itself names the tool.
LIBRARY = re.compile(
    r"python-requests|python-urllib|python-httpx|aiohttp|httpx|\bcurl/|wget|libcurl"
    r"|go-http-client|\bjava/|apache-httpclient|jakarta commons-httpclient|okhttp"
    r"|async-http-client|libwww-perl|node-fetch|undici|guzzlehttp|faraday|httpclient|scrapy"
    r"|headlesschrome|phantomjs|puppeteer|playwright|selenium|postmanruntime|insomnia|httpie"
    r"|reqwest|powershell|cpp-httplib"
)
# Tools whose agent is just their name, matched at the start only.
LIBRARY_START = re.compile(
    r"curl|go |java|ahc/|lwp|axios|got |php|ruby|hyper/|dart/|restsharp|winhttp|python"
)

# Words bots put in their agents. "bot" must not be followed by a letter (so
# "bottle" is not a bot) nor follow "cu" (Cubot is a phone maker, "CUBOT X30");
# "scanner" must not follow "cam" (CamScanner is a phone app with a web view,
# listed as a person's app by device-detector's mobile_app.yml and isbot's browsers.yml).
BOT_WORD = re.compile(
    r"(?<!cu)bot(?![a-z])|robot|crawl|spider|slurp|archiver|fetcher|(?<!cam)scanner|checker"
    r"|validator|monitor|headless"
)
WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.!-")
# "(compatible; Name" is how bots introduce themselves, also inside another
# group ("(KHTML, like Gecko; compatible; Name)"); the only people using the
# form are Internet Explorer, Office (ms-office), Lotus Notes and Konqueror.
COMPATIBLE = re.compile(
    r"[(;] ?compatible;(?!\s*(?:msie|ms-office|msoffice|lotus|konqueror|ibm notes|hcl notes))"
    r"\s*([^;)]{1,60})",
)
# People's programs never put a web address or a contact address in their agent.
CONTACT = re.compile(r"https?://|www\.|\+https?|[\w.-]+@[\w-]+\.[a-z]{2,}")
