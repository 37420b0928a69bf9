"""Agents of people: mail programs, Apple Mail, in-app viewers, browsers, platforms.

Sample agents of each family are pinned in tests/tracking/test_classify.py and
test_agent_tables.py, with the public source they were taken from.
"""

from __future__ import annotations

import re

from mailbeacon.tracking.agents.matching import Entry, compile_table

MAIL_CLIENTS = compile_table(
    [
        Entry(
            "outlook",
            r"microsoft outlook|ms-office|msoffice|macoutlook|outlook-(?:ios|android|express"
            r"|windows)|^outlook/|oneoutlook",
            "Outlook",
        ),
        Entry("thunderbird", r"thunderbird|icedove|betterbird", "Thunderbird"),
        Entry("seamonkey", r"seamonkey", "SeaMonkey"),
        Entry("postbox", r"postbox", "Postbox"),
        Entry("notes", r"lotus[- ]notes|ibm notes|hcl notes", "Lotus Notes"),
        Entry("windows_mail", r"windowsmail|windows[- ]live[- ]mail|windows mail", "Windows Mail"),
        # The Gmail app's own fetches (device-detector Tests/Parser/Client/fixtures/pim.yml).
        Entry("gmail_app", r"^android-gmail/", "the Gmail app"),
        # faisalman/ua-parser-js test/data/ua/extension/email.json
        Entry("samsung_email", r"samsungemail/", "Samsung Email"),
        Entry("airmail", r"airmail", "Airmail"),
        Entry("mailbird", r"mailbird", "Mailbird"),
        Entry("bluemail", r"bluemail", "BlueMail"),
        Entry("emclient", r"em client", "eM Client"),
        Entry("foxmail", r"foxmail", "Foxmail"),
        Entry(
            "yahoo_mail", r"yahoo(?:%20| )?mail/|yahoomobile|\bymail\b|yjapp", "the Yahoo Mail app"
        ),
        Entry("spark", r"readdle|\bspark(?:mail)?/", "Spark"),
        Entry("superhuman", r"superhuman", "Superhuman"),
        Entry("canary", r"canary ?mail", "Canary Mail"),
        Entry("edison", r"edison ?mail", "Edison Mail"),
        Entry("newton", r"cloudmagic|newton ?mail", "Newton Mail"),
        Entry("proton", r"proton ?mail|proton-mail", "Proton Mail"),
        Entry("tuta", r"tutanota|tuta ?mail", "Tuta"),
        Entry("k9", r"k-9 mail|k9mail|fairemail|aqua ?mail", "an Android mail app"),
        Entry("evolution", r"\bevolution/", "Evolution"),
        Entry("kmail", r"kmail|kontact", "KMail"),
        Entry("claws", r"claws[- ]mail|sylpheed", "Claws Mail"),
        Entry("geary", r"\bgeary\b", "Geary"),
        Entry("mailspring", r"mailspring", "Mailspring"),
        Entry("mimestream", r"mimestream", "Mimestream"),
        Entry("polymail", r"polymail", "Polymail"),
        Entry("the_bat", r"the bat!", "The Bat!"),
        Entry("opera_mail", r"opera mail", "Opera Mail"),
        Entry("zoho_mail", r"zoho ?mail", "Zoho Mail"),
    ]
)

# Apple Mail (macOS and iOS) sends WebKit's own agent with no browser token:
# "Mozilla/5.0 (Macintosh; ...) AppleWebKit/605.1.15 (KHTML, like Gecko)". iOS
# apps' web views look the same, which is fine: they are people too.
APPLE_MAIL = re.compile(
    r"mozilla/5\.0 \((?:macintosh|iphone|ipad|ipod)[^)]*\) applewebkit/[\d.+]+ "
    r"\(khtml, like gecko\)(?: mobile/\w+)?",
)

IN_APP = compile_table(
    [
        Entry("facebook_app", r"fb_iab|fban/|fbav/", "the Facebook app"),
        Entry("instagram", r"instagram", "the Instagram app"),
        Entry("linkedin_app", r"linkedinapp", "the LinkedIn app"),
        Entry("wechat", r"micromessenger", "WeChat"),
        Entry("line", r"\bline/", "the LINE app"),
        Entry("snapchat", r"snapchat", "the Snapchat app"),
        Entry("google_app", r"\bgsa/", "the Google app"),
        # Android System WebView inside an app: Gmail, Samsung Email, Outlook,
        # K-9 / Thunderbird for Android all show mail this way.
        Entry("android_webview", r"; wv\)|version/4\.0 chrome/", "an app's built-in viewer"),
        Entry("electron", r"electron/", "a desktop app"),
    ]
)

BROWSERS = compile_table(
    [
        Entry("edge", r"\bedg(?:e|a|ios)?/", "Edge"),
        Entry("opera", r"\bopr/|opera|\bopt/", "Opera"),
        Entry("samsung", r"samsungbrowser", "Samsung Internet"),
        Entry("yandex", r"yabrowser", "Yandex Browser"),
        Entry("vivaldi", r"vivaldi", "Vivaldi"),
        Entry("brave", r"\bbrave\b", "Brave"),
        Entry("uc", r"ucbrowser", "UC Browser"),
        Entry("firefox", r"firefox|fxios", "Firefox"),
        Entry("chrome", r"crios|chrome/|chromium", "Chrome"),
        Entry("safari", r"safari/|mobile safari", "Safari"),
        Entry("ie", r"msie|trident/", "Internet Explorer"),
        Entry("konqueror", r"konqueror", "Konqueror"),
    ]
)

CFNETWORK = re.compile(r"^([^/]{1,60})/[^ ]* cfnetwork/")
DALVIK = re.compile(r"dalvik/")
GENERIC_BROWSER = re.compile(r"^mozilla/[45]\.0 \(.*(?:gecko|applewebkit|trident|presto)")

PLATFORMS = (
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


def platform_of(agent: str) -> str | None:
    """The device family named in a lowercased agent, if any."""
    for pattern, name in PLATFORMS:
        if pattern.search(agent):
            return name
    return None
