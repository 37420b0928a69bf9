"""Label every open and click: a person, a proxy acting for one, or a machine, and why.

Generic crawler lists are no use here: they call Outlook and Apple Mail bots and
drop Gmail's image proxy, which stands for a real person opening the email. This
classifier is written for mail. It reads three kinds of evidence:

* the User-Agent, through hand-written tables of mail clients, browsers, image
  proxies, link previewers, security scanners and HTTP libraries
  (``identify_agent``; stateless, cached, precompiled);
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
from urllib.parse import unquote

from mailbeacon.models.event import EventLabel
from mailbeacon.tracking.networks import NetworkMap

HIGH = "high"
MEDIUM = "medium"
LOW = "low"

OPEN = "open"
CLICK = "click"

# The reason column holds 300 characters.
MAX_REASON_CHARS = 300
# Real agents stay under a few hundred characters; the rest of a longer one
# cannot change the verdict, and cutting it bounds the regex work per hit.
_MAX_AGENT_CHARS = 1024


@dataclass(frozen=True, slots=True)
class Policy:
    too_fast_seconds: float = 5.0
    burst_seconds: float = 5.0
    burst_links: int = 2  # distinct links within burst_seconds from one source => burst
    duplicate_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class HitSignals:
    kind: str  # "open" | "click"
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

    kind: str
    link_position: int | None
    source_key: str
    seconds_before: float  # how long before this hit it happened (>= 0)
    label: EventLabel


@dataclass(frozen=True, slots=True)
class Verdict:
    label: EventLabel
    reason: str
    certainty: str  # "high" | "medium" | "low"


class AgentKind(StrEnum):
    MAIL_CLIENT = "mail_client"  # a mail program a person reads with
    BROWSER = "browser"  # a browser or an app's built-in web view
    APP = "app"  # an app's own networking on a phone or computer (CFNetwork, Dalvik)
    APPLE_MAIL = "apple_mail"  # WebKit with no browser token: Apple Mail, or an iOS web view
    BARE = "bare"  # exactly "Mozilla/5.0", what Mail Privacy Protection's proxy sends
    IMAGE_PROXY = "image_proxy"  # fetches images for a person who opened the email
    PREFETCHER = "prefetcher"  # fetches before anyone opened anything
    LINK_PREVIEW = "link_preview"  # renders a preview of a link pasted somewhere
    SCANNER = "scanner"  # security scanners, crawlers, HTTP libraries, scripts
    UNKNOWN = "unknown"


PERSON_KINDS = frozenset(
    {
        AgentKind.MAIL_CLIENT,
        AgentKind.BROWSER,
        AgentKind.APP,
        AgentKind.APPLE_MAIL,
        AgentKind.UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class AgentClass:
    """What a User-Agent says about who is asking, before any network or timing evidence."""

    kind: AgentKind
    # For people: the program ("Thunderbird", "Chrome", "the Facebook app").
    # For machines: who runs it ("Barracuda", "Slack", "python-requests").
    name: str
    # One sentence for a salesperson; for machines it is the whole explanation.
    detail: str
    certainty: str
    platform: str | None = None  # "Windows", "Mac", "iPhone", ...
    # The network that operates this agent (image proxies), to check the address against.
    operator: str | None = None

    @property
    def is_person(self) -> bool:
        return self.kind in PERSON_KINDS


# --- Agent tables ---------------------------------------------------------------
# Each table is (key, regex, display name) in priority order: an Edge agent also
# says "Chrome/", a Facebook in-app agent also carries the Android WebView marker,
# and the earlier entry must win wherever its token sits in the string. A table
# is searched with one alternation of all its entries (without named groups,
# which make Python's engine several times slower); each token found is then
# matched against the entries in priority order. Entries match short tokens,
# never a long stretch of the agent, so one scan finds them all.
# Patterns are lowercase and run on the lowercased agent, as case-insensitive
# matching is slower too.


@dataclass(frozen=True, slots=True)
class _Table:
    probe: re.Pattern[str]
    entries: tuple[tuple[str, re.Pattern[str]], ...]
    names: dict[str, str]


def _compile(entries: Sequence[tuple[str, str, str]]) -> _Table:
    return _Table(
        probe=re.compile("|".join(f"(?:{regex})" for _, regex, _ in entries)),
        entries=tuple((key, re.compile(regex)) for key, regex, _ in entries),
        names={key: name for key, _, name in entries},
    )


def _first(table: _Table, agent: str) -> str | None:
    """The key of the highest-priority entry found anywhere in the agent."""
    best = len(table.entries)
    for m in table.probe.finditer(agent):
        token = m.group()
        for rank, (_, entry) in enumerate(table.entries[:best]):
            if entry.fullmatch(token):
                best = rank
                break
        if best == 0:
            break
    return table.entries[best][0] if best < len(table.entries) else None


_BARE_MOZILLA = re.compile(r"mozilla/5\.0")

# Gmail prefetches images (and samples links) with a frozen 2015 Chrome 42 /
# Edge 12 agent; no person has run that browser for years.
_GMAIL_PREFETCH = re.compile(
    r"gmail-content-sampling|chrome/42\.0\.2311\.\d+ safari/537\.36 edge/12\.\d+"
)

# (key, regex, name, operating network)
_IMAGE_PROXY_ENTRIES = (
    ("gmail", r"googleimageproxy|via ggpht\.com", "Gmail image proxy (GoogleImageProxy)", "google"),
    ("yahoo", r"yahoomailproxy", "Yahoo Mail image proxy (YahooMailProxy)", "yahoo"),
)
_IMAGE_PROXIES = _compile([e[:3] for e in _IMAGE_PROXY_ENTRIES])
_IMAGE_PROXY_OPERATORS = {key: network for key, _, _, network in _IMAGE_PROXY_ENTRIES}

# Services that fetch a link (or an image) to draw a preview where it was pasted
# or shown: a hit from them means the link travelled, not that the recipient
# clicked. Desktop apps of the same vendors (Slack/, Discord/ in an Electron
# agent) are people and deliberately not matched.
_LINK_PREVIEWS = _compile(
    [
        ("microsoftpreview", r"microsoftpreview", "Microsoft (Outlook, Teams)"),
        (
            "office_check",
            r"microsoft office (?:existence|protocol) discovery"
            r"|microsoft data access internet publishing"
            r"|microsoft office/[\d.]+ \([^)]*microsoft (?:word|excel|powerpoint|onenote|visio"
            r"|publisher|access|project)",
            "Microsoft Office's link check",
        ),
        ("skype", r"skypeuripreview", "Skype / Teams"),
        ("bing", r"bingpreview", "Bing"),
        ("imessage", r"facebookexternalhit/1\.1 facebot twitterbot/1\.0", "Apple Messages"),
        ("slack", r"slackbot|slack-imgproxy", "Slack"),
        ("linkedin", r"linkedinbot", "LinkedIn"),
        ("telegram", r"telegrambot", "Telegram"),
        ("whatsapp", r"^whatsapp/", "WhatsApp"),
        ("discord", r"discordbot", "Discord"),
        (
            "facebook",
            r"facebookexternalhit|facebot|facebookcatalog|meta-externalagent|meta-externalfetcher",
            "Facebook / Meta",
        ),
        ("twitter", r"twitterbot", "X (Twitter)"),
        ("mattermost", r"mattermost-bot", "Mattermost"),
        ("iframely", r"iframely", "Iframely (link embeds)"),
        ("embedly", r"embedly", "Embedly (link embeds)"),
        ("pinterest", r"pinterestbot", "Pinterest"),
        ("reddit", r"redditbot", "Reddit"),
        ("vk", r"vkshare", "VK"),
        ("skypebot", r"skypebot", "Skype"),
        ("google_chat", r"google-hangouts|googlechat", "Google Chat"),
        ("quora", r"quora link preview", "Quora"),
        ("yahoo_preview", r"yahoo link preview", "Yahoo Mail"),
        ("generic_preview", r"preview", "a link preview service"),
    ]
)

# Email security products, link checkers and Internet scanners, by name. Browser
# brands of security vendors (Avast/, AVG/, Norton/ secure browsers) are people's
# browsers and deliberately absent.
_SECURITY = _compile(
    [
        ("barracuda", r"barracuda", "Barracuda"),
        ("mimecast", r"mimecast", "Mimecast"),
        ("proofpoint", r"proofpoint|urldefense|pphosted", "Proofpoint"),
        ("safelinks", r"safe[ -]?links", "Microsoft Defender Safe Links"),
        ("kaspersky", r"kaspersky|cfr link resolver", "Kaspersky"),
        ("bitdefender", r"bitdefender", "Bitdefender"),
        ("trendmicro", r"trend ?micro", "Trend Micro"),
        ("sophos", r"sophos", "Sophos"),
        ("symantec", r"symantec|messagelabs", "Symantec"),
        ("forcepoint", r"forcepoint|websense", "Forcepoint"),
        ("fortinet", r"fortinet|fortiguard", "Fortinet"),
        ("checkpoint", r"check ?point|avanan", "Check Point"),
        ("cisco", r"ironport|cisco secure", "Cisco Secure Email"),
        ("zscaler", r"zscaler", "Zscaler"),
        ("paloalto", r"palo ?alto networks|expanse", "Palo Alto Networks"),
        ("virustotal", r"virustotal", "VirusTotal"),
        ("urlscan", r"urlscan", "urlscan.io"),
        ("netcraft", r"netcraft", "Netcraft"),
        ("censys", r"censys", "Censys"),
        ("bitsight", r"bitsight", "BitSight"),
        ("xforce", r"x-?force", "IBM X-Force"),
        ("safedns", r"safedns", "SafeDNS"),
        ("yandex_av", r"yandexantivirus", "Yandex Antivirus"),
        ("genieo", r"genieo", "Genieo web filter"),
        ("leakix", r"leakix|l9scan", "LeakIX"),
        ("zgrab", r"zgrab", "ZGrab"),
        (
            "internet_scanner",
            r"masscan|nmap|nessus|qualys|nuclei|acunetix|netsparker|shodan",
            "an Internet security scanner",
        ),
        (
            "security_generic",
            r"anti-?virus|web ?filter|url ?filter|link ?(?:resolver|protect|scan)|url ?protect"
            r"|sandbox|phish",
            "a security filter",
        ),
    ]
)

# HTTP libraries and automation tools: scripts, link checkers and gateways use
# them; no person reads email with one. The match itself names the tool.
_LIBRARY = re.compile(
    r"python-requests|python-urllib|python-httpx|aiohttp|httpx|\bcurl/|wget|libcurl"
    r"|go-http-client|\bjava/|apache-httpclient|jakarta commons-httpclient|okhttp"
    r"|async-http-client|libwww-perl|node-fetch|undici|guzzlehttp|faraday|httpclient|scrapy"
    r"|headlesschrome|phantomjs|puppeteer|playwright|selenium|postmanruntime|insomnia|httpie"
    r"|reqwest|powershell|cpp-httplib"
)
# Tools whose agent is just their name, matched at the start only.
_LIBRARY_START = re.compile(
    r"curl|go |java|ahc/|lwp|axios|got |php|ruby|hyper/|dart/|restsharp|winhttp|python"
)

# Words bots put in their agents. "bot" must not be followed by a letter (so
# "bottle" is not a bot) nor follow "cu" (Cubot is a phone maker, "CUBOT X30").
_BOT_WORD = re.compile(
    r"(?<!cu)bot(?![a-z])|robot|crawl|spider|slurp|archiver|fetcher|scanner|checker"
    r"|validator|monitor|headless"
)
_WORD_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_.!-")
# "(compatible; Name" is how bots introduce themselves; the only people using the
# form are Internet Explorer, Office (ms-office), Lotus Notes and Konqueror.
_COMPATIBLE = re.compile(
    r"\(compatible;(?!\s*(?:msie|ms-office|msoffice|lotus|konqueror|ibm notes|hcl notes))"
    r"\s*([^;)]{1,60})",
)
# People's programs never put a web address or a contact address in their agent.
_CONTACT = re.compile(r"https?://|www\.|\+https?|[\w.-]+@[\w-]+\.[a-z]{2,}")

_MAIL_CLIENTS = _compile(
    [
        (
            "outlook",
            r"microsoft outlook|ms-office|msoffice|macoutlook|outlook-(?:ios|android|express"
            r"|windows)|^outlook/|oneoutlook",
            "Outlook",
        ),
        ("thunderbird", r"thunderbird|icedove|betterbird", "Thunderbird"),
        ("seamonkey", r"seamonkey", "SeaMonkey"),
        ("postbox", r"postbox", "Postbox"),
        ("notes", r"lotus[- ]notes|ibm notes|hcl notes", "Lotus Notes"),
        ("windows_mail", r"windowsmail|windows[- ]live[- ]mail|windows mail", "Windows Mail"),
        ("airmail", r"airmail", "Airmail"),
        ("mailbird", r"mailbird", "Mailbird"),
        ("bluemail", r"bluemail", "BlueMail"),
        ("emclient", r"em client", "eM Client"),
        ("foxmail", r"foxmail", "Foxmail"),
        ("yahoo_mail", r"yahoo(?:%20| )?mail/|yahoomobile|\bymail\b|yjapp", "the Yahoo Mail app"),
        ("spark", r"readdle|\bspark(?:mail)?/", "Spark"),
        ("superhuman", r"superhuman", "Superhuman"),
        ("canary", r"canary ?mail", "Canary Mail"),
        ("edison", r"edison ?mail", "Edison Mail"),
        ("newton", r"cloudmagic|newton ?mail", "Newton Mail"),
        ("proton", r"proton ?mail|proton-mail", "Proton Mail"),
        ("tuta", r"tutanota|tuta ?mail", "Tuta"),
        ("k9", r"k-9 mail|k9mail|fairemail|aqua ?mail", "an Android mail app"),
        ("evolution", r"\bevolution/", "Evolution"),
        ("kmail", r"kmail|kontact", "KMail"),
        ("claws", r"claws[- ]mail|sylpheed", "Claws Mail"),
        ("geary", r"\bgeary\b", "Geary"),
        ("mailspring", r"mailspring", "Mailspring"),
        ("mimestream", r"mimestream", "Mimestream"),
        ("polymail", r"polymail", "Polymail"),
        ("the_bat", r"the bat!", "The Bat!"),
        ("opera_mail", r"opera mail", "Opera Mail"),
        ("zoho_mail", r"zoho ?mail", "Zoho Mail"),
    ]
)

# Apple Mail (macOS and iOS) sends WebKit's own agent with no browser token:
# "Mozilla/5.0 (Macintosh; ...) AppleWebKit/605.1.15 (KHTML, like Gecko)". iOS
# apps' web views look the same, which is fine: they are people too.
_APPLE_MAIL = re.compile(
    r"mozilla/5\.0 \((?:macintosh|iphone|ipad|ipod)[^)]*\) applewebkit/[\d.+]+ "
    r"\(khtml, like gecko\)(?: mobile/\w+)?",
)

_IN_APP = _compile(
    [
        ("facebook_app", r"fb_iab|fban/|fbav/", "the Facebook app"),
        ("instagram", r"instagram", "the Instagram app"),
        ("linkedin_app", r"linkedinapp", "the LinkedIn app"),
        ("wechat", r"micromessenger", "WeChat"),
        ("line", r"\bline/", "the LINE app"),
        ("snapchat", r"snapchat", "the Snapchat app"),
        ("google_app", r"\bgsa/", "the Google app"),
        # Android System WebView inside an app: Gmail, Samsung Email, Outlook,
        # K-9 / Thunderbird for Android all show mail this way.
        ("android_webview", r"; wv\)|version/4\.0 chrome/", "an app's built-in viewer"),
        ("electron", r"electron/", "a desktop app"),
    ]
)

_BROWSERS = _compile(
    [
        ("edge", r"\bedg(?:e|a|ios)?/", "Edge"),
        ("opera", r"\bopr/|opera|\bopt/", "Opera"),
        ("samsung", r"samsungbrowser", "Samsung Internet"),
        ("yandex", r"yabrowser", "Yandex Browser"),
        ("vivaldi", r"vivaldi", "Vivaldi"),
        ("brave", r"\bbrave\b", "Brave"),
        ("uc", r"ucbrowser", "UC Browser"),
        ("firefox", r"firefox|fxios", "Firefox"),
        ("chrome", r"crios|chrome/|chromium", "Chrome"),
        ("safari", r"safari/|mobile safari", "Safari"),
        ("ie", r"msie|trident/", "Internet Explorer"),
        ("konqueror", r"konqueror", "Konqueror"),
    ]
)

_CFNETWORK = re.compile(r"^([^/]{1,60})/[^ ]* cfnetwork/")
_DALVIK = re.compile(r"dalvik/")
_GENERIC_BROWSER = re.compile(r"^mozilla/[45]\.0 \(.*(?:gecko|applewebkit|trident|presto)")

_PLATFORMS = (
    (re.compile(r"iphone|ipod"), "iPhone"),
    (re.compile(r"ipad"), "iPad"),
    (re.compile(r"android"), "Android"),
    (re.compile(r"windows phone"), "Windows Phone"),
    (re.compile(r"windows|win64|win32|wow64"), "Windows"),
    (re.compile(r"\bcros\b"), "ChromeOS"),
    (re.compile(r"macintosh|mac os x|macos|macoutlook|darwin/[\d.]+ \(x86_64\)"), "Mac"),
    (re.compile(r"\bios\b|-ios\b"), "iPhone or iPad"),
    (re.compile(r"darwin/"), "an Apple device"),
    (re.compile(r"linux|x11"), "Linux"),
)

_TOKEN_END = re.compile(r"[/;( ]")
_UNSAFE_TEXT = re.compile(r"[^\w .+!-]")


def _platform(agent: str) -> str | None:
    for pattern, name in _PLATFORMS:
        if pattern.search(agent):
            return name
    return None


def _word_around(text: str, start: int, end: int) -> str:
    """The whole word a match sits in ("Googlebot" around "bot")."""
    lowered = text.lower()
    while start > 0 and lowered[start - 1] in _WORD_CHARS:
        start -= 1
    while end < len(text) and lowered[end] in _WORD_CHARS:
        end += 1
    return text[start:end]


def _token(text: str, limit: int = 40) -> str:
    """A tool's name cut from an agent, safe and short enough to show in a reason."""
    name = _TOKEN_END.split(text.strip(), maxsplit=1)[0] or text.strip()
    return _UNSAFE_TEXT.sub("", name)[:limit] or "an unnamed tool"


def _machine(kind: AgentKind, name: str, detail: str, certainty: str = HIGH) -> AgentClass:
    return AgentClass(kind=kind, name=name, detail=detail, certainty=certainty)


def _person(kind: AgentKind, name: str, platform: str | None, certainty: str) -> AgentClass:
    where = f" on {platform}" if platform else ""
    return AgentClass(
        kind=kind, name=name, detail=f"{name}{where}", certainty=certainty, platform=platform
    )


@lru_cache(maxsize=8192)
def identify_agent(user_agent: str) -> AgentClass:
    """Classify a User-Agent on its own: who is asking, before network and timing evidence.

    Machines are looked for first, because they often wrap an ordinary browser
    agent (Googlebot smartphone, MicrosoftPreview). What is left is a person's
    mail client or browser; an agent nothing recognises counts as a person with
    low certainty rather than being thrown away.
    """
    agent = user_agent.strip()[:_MAX_AGENT_CHARS]
    low = agent.lower()
    if len(low) != len(agent):
        # A few non-ASCII letters change length when lowercased; names are then
        # cut from the lowercased text so that match positions stay right.
        agent = low
    if not low:
        return _machine(
            AgentKind.SCANNER,
            "no User-Agent",
            "The request carried no User-Agent at all, which mail apps and browsers always send:"
            " an automated check",
            MEDIUM,
        )
    if _BARE_MOZILLA.fullmatch(low):
        return _machine(
            AgentKind.BARE,
            "Mozilla/5.0",
            'The bare agent "Mozilla/5.0" is what Apple Mail Privacy Protection sends when it'
            " loads images for the recipient's Mail app",
            MEDIUM,
        )
    if _GMAIL_PREFETCH.search(low):
        return _machine(
            AgentKind.PREFETCHER,
            "Gmail's prefetcher",
            "Gmail's prefetcher (an old Chrome 42 / Edge 12 agent) loaded this before the"
            " recipient opened the email",
        )
    if key := _first(_IMAGE_PROXIES, low):
        name = _IMAGE_PROXIES.names[key]
        return AgentClass(
            kind=AgentKind.IMAGE_PROXY,
            name=name,
            detail=f"{name}: a real open, without device or place",
            certainty=HIGH,
            operator=_IMAGE_PROXY_OPERATORS[key],
        )
    if key := _first(_LINK_PREVIEWS, low):
        name = _LINK_PREVIEWS.names[key]
        if key == "office_check":
            detail = (
                "Microsoft Office checked the link before opening it (Office link check);"
                " the browser visit that may follow is counted on its own"
            )
        else:
            detail = f"Link preview by {name}: the link was shown or shared there, not followed"
        return _machine(AgentKind.LINK_PREVIEW, name, detail)
    if key := _first(_SECURITY, low):
        name = _SECURITY.names[key]
        return _machine(
            AgentKind.SCANNER, name, f"Security scanner ({name}) checked the email, not a person"
        )
    if m := (_LIBRARY_START.match(low) or _LIBRARY.search(low)):
        name = _token(agent[m.start() :])
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, a programming tool used by scripts and link checkers,"
            " not by a person",
        )
    if m := _BOT_WORD.search(low):
        name = _token(_word_around(agent, m.start(), m.end()))
        return _machine(AgentKind.SCANNER, name, f"Fetched by {name}, an automated robot")
    if m := _COMPATIBLE.search(low):
        name = _token(agent[m.start(1) : m.end(1)])
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, an automated service (it introduces itself the way robots do)",
            MEDIUM,
        )
    if _CONTACT.search(low):
        name = _token(agent)
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, an automated service (its agent carries a web or mail address)",
            MEDIUM,
        )

    platform = _platform(low)
    if key := _first(_MAIL_CLIENTS, low):
        return _person(AgentKind.MAIL_CLIENT, _MAIL_CLIENTS.names[key], platform, HIGH)
    if _APPLE_MAIL.fullmatch(low):
        return _person(AgentKind.APPLE_MAIL, "Apple Mail", platform, MEDIUM)
    if key := _first(_IN_APP, low):
        return _person(AgentKind.BROWSER, _IN_APP.names[key], platform, MEDIUM)
    if key := _first(_BROWSERS, low):
        return _person(AgentKind.BROWSER, _BROWSERS.names[key], platform, HIGH)
    if m := _CFNETWORK.search(low):
        app = _token(unquote(agent[m.start(1) : m.end(1)]).replace(" ", "_")).replace("_", " ")
        return _person(AgentKind.APP, f"the {app} app", platform or "an Apple device", MEDIUM)
    if _DALVIK.search(low):
        return _person(AgentKind.APP, "an app", "Android", MEDIUM)
    if _GENERIC_BROWSER.search(low):
        return _person(AgentKind.BROWSER, "a web browser", platform, MEDIUM)
    return _person(AgentKind.UNKNOWN, "a program we do not recognise", platform, LOW)


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


def _verdict(label: EventLabel, reason: str, certainty: str) -> Verdict:
    return Verdict(label=label, reason=_clip(reason), certainty=certainty)


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _verb(kind: str) -> str:
    return "Clicked" if kind == CLICK else "Opened"


def _machine_verdict(signals: HitSignals, agent: AgentClass) -> Verdict | None:
    """Scanner / link preview / Apple MPP from the agent and the network, or None."""
    is_click = signals.kind == CLICK
    role = _network_role(signals.network)

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
            HIGH,
        )

    if agent.kind is AgentKind.IMAGE_PROXY:
        if is_click:
            return _verdict(
                EventLabel.SCANNER,
                f"{agent.name} only loads images; a link followed through it is an automated"
                " check, not a click",
                MEDIUM,
            )
        if role is not None and signals.network != agent.operator:
            return _verdict(
                EventLabel.SCANNER,
                f"Claims to be the {agent.name} but came from {role.display}'s network:"
                " an automated check",
                MEDIUM,
            )
        return None

    # Mailbox providers' own servers: Gmail's proxy was handled above, anything
    # else from there is the provider (or its cloud customers) checking the mail.
    if role is not None and role.role is _Role.PROVIDER:
        return _verdict(
            EventLabel.SCANNER,
            f"From {role.display}'s network ({role.what}), though it presented itself as"
            f" {agent.name}",
            MEDIUM,
        )

    from_apple = role is not None and role.role is _Role.APPLE
    if agent.kind is AgentKind.BARE:
        if is_click:
            return _verdict(
                EventLabel.SCANNER,
                'A click with the bare agent "Mozilla/5.0": software following the link;'
                " Apple Mail Privacy Protection only loads images",
                MEDIUM,
            )
        if from_apple:
            return _verdict(
                EventLabel.APPLE_MPP,
                "Apple Mail Privacy Protection: Apple's proxy loaded the images from Apple's"
                " published network ranges, as it does for every email, so this open is not"
                " confirmed",
                HIGH,
            )
        return _verdict(
            EventLabel.APPLE_MPP,
            'Most likely Apple Mail Privacy Protection (the bare agent "Mozilla/5.0"), which'
            " loads images for every email, so this open is not confirmed; the address was not"
            " matched to Apple's published ranges",
            MEDIUM,
        )
    if from_apple and agent.kind is AgentKind.APPLE_MAIL and not is_click:
        return _verdict(
            EventLabel.APPLE_MPP,
            "Apple Mail Privacy Protection: Apple Mail's images were loaded from Apple's"
            " published network ranges, which happens for every email, so this open is not"
            " confirmed",
            HIGH,
        )
    return None


def _person_verdict(signals: HitSignals, agent: AgentClass) -> Verdict:
    """The tentative verdict for a hit nothing marked as a machine: human or image proxy."""
    if agent.kind is AgentKind.IMAGE_PROXY:
        certainty = HIGH if signals.network == agent.operator else MEDIUM
        return _verdict(EventLabel.IMAGE_PROXY, agent.detail, certainty)
    role = _network_role(signals.network)
    verb = _verb(signals.kind)
    if role is not None and role.role is _Role.APPLE:
        return _verdict(
            EventLabel.HUMAN,
            f"{verb} in {agent.detail}, through iCloud Private Relay (Apple's network), so"
            " without the recipient's place",
            MEDIUM,
        )
    if agent.kind is AgentKind.UNKNOWN:
        return _verdict(
            EventLabel.HUMAN,
            f"{verb} in {agent.detail}: counted as a person, since nothing marks it as automated",
            LOW,
        )
    return _verdict(EventLabel.HUMAN, f"{verb} in {agent.detail}", agent.certainty)


def _burst(signals: HitSignals, prior: Sequence[PriorHit], policy: Policy) -> Verdict | None:
    if signals.kind != CLICK or signals.link_position is None or not signals.source_key:
        return None
    links = {signals.link_position}
    span = 0.0
    for hit in prior:
        if (
            hit.kind == CLICK
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
        HIGH if len(links) >= 3 else MEDIUM,
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
    what = "click on this link" if signals.kind == CLICK else "open"
    return _verdict(
        EventLabel.DUPLICATE,
        f"Repeat of the same {what} from the same place {_seconds(nearest)} s earlier",
        HIGH,
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
    if signals.viewer_is_sender:
        return _verdict(
            EventLabel.SELF,
            f"{_verb(signals.kind)} in your own signed-in browser: not counted for the recipient",
            HIGH,
        )
    if signals.is_head:
        return _verdict(
            EventLabel.PREFETCH,
            "An HTTP HEAD request: software checked that the link works without loading it",
            HIGH,
        )
    hint = (signals.prefetch_hint or "").strip()
    if hint and _PREFETCH_HINT.search(hint.lower()):
        shown = _HINT_TEXT.sub("", hint)[:60]
        return _verdict(
            EventLabel.PREFETCH,
            f"Fetched ahead of time ({shown}): the app or browser loaded it before anyone"
            " looked at it",
            HIGH,
        )
    agent = identify_agent(signals.user_agent)
    if agent.kind is AgentKind.PREFETCHER:
        return _verdict(EventLabel.PREFETCH, agent.detail, agent.certainty)

    machine = _machine_verdict(signals, agent)
    if machine is not None:
        return machine

    tentative = _person_verdict(signals, agent)
    after = signals.seconds_after_send
    if after is not None and after < policy.too_fast_seconds:
        return _verdict(
            EventLabel.TOO_FAST,
            f"{_verb(signals.kind)} {_seconds(max(after, 0.0))} s after sending, faster than a"
            f" person reads an email (limit {_seconds(policy.too_fast_seconds)} s): most likely"
            " an automatic check",
            MEDIUM,
        )
    timing = _burst(signals, prior, policy) or _duplicate(signals, prior, policy)
    return timing or tentative


def explain_hit(
    kind: str,
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
