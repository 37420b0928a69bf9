"""What identifying a User-Agent yields: the kind of agent, who it is, and how sure we are."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Certainty(StrEnum):
    """How sure a verdict is; stored and shown as the lowercase value."""

    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


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
    certainty: Certainty
    platform: str | None = None  # "Windows", "Mac", "iPhone", ...
    # The network that operates this agent (image proxies), to check the address against.
    operator: str | None = None
    # Which rule matched ("link_preview:slack", "bot_word"): for tests and for
    # re-scoring, so that nothing has to read the wording of name or detail.
    rule: str = ""

    @property
    def is_person(self) -> bool:
        return self.kind in PERSON_KINDS
