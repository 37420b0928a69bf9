"""identify_agent: who a User-Agent says is asking, from the tables alone."""

from __future__ import annotations

import re
from functools import lru_cache
from urllib.parse import unquote

from mailbeacon.tracking.agents import machines, people
from mailbeacon.tracking.agents.model import AgentClass, AgentKind, Certainty

# Real agents stay under a few hundred characters; the rest of a longer one
# cannot change the verdict, and cutting it bounds the regex work per hit.
_MAX_AGENT_CHARS = 1024

_TOKEN_END = re.compile(r"[/;( ]")
_UNSAFE_TEXT = re.compile(r"[^\w .+!-]")


def _word_around(text: str, start: int, end: int) -> str:
    """The whole word a match sits in ("Googlebot" around "bot")."""
    lowered = text.lower()
    while start > 0 and lowered[start - 1] in machines.WORD_CHARS:
        start -= 1
    while end < len(text) and lowered[end] in machines.WORD_CHARS:
        end += 1
    return text[start:end]


def _token(text: str, limit: int = 40) -> str:
    """A tool's name cut from an agent, safe and short enough to show in a reason."""
    name = _TOKEN_END.split(text.strip(), maxsplit=1)[0] or text.strip()
    return _UNSAFE_TEXT.sub("", name)[:limit] or "an unnamed tool"


def _machine(
    kind: AgentKind, name: str, detail: str, rule: str, certainty: Certainty = Certainty.HIGH
) -> AgentClass:
    return AgentClass(kind=kind, name=name, detail=detail, certainty=certainty, rule=rule)


def _person(
    kind: AgentKind, name: str, platform: str | None, certainty: Certainty, rule: str
) -> AgentClass:
    where = f" on {platform}" if platform else ""
    return AgentClass(
        kind=kind,
        name=name,
        detail=f"{name}{where}",
        certainty=certainty,
        platform=platform,
        rule=rule,
    )


def _special(low: str) -> AgentClass | None:
    """The agents that say what they are by their exact shape: none, bare, Gmail's prefetcher."""
    if not low:
        return _machine(
            AgentKind.SCANNER,
            "no User-Agent",
            "The request carried no User-Agent at all, which mail apps and browsers always send:"
            " an automated check",
            "empty",
            Certainty.MEDIUM,
        )
    if machines.BARE_MOZILLA.fullmatch(low):
        return _machine(
            AgentKind.BARE,
            "Mozilla/5.0",
            'The bare agent "Mozilla/5.0" is what Apple Mail Privacy Protection sends when it'
            " loads images for the recipient's Mail app",
            "bare",
            Certainty.MEDIUM,
        )
    if machines.GMAIL_PREFETCH.search(low):
        return _machine(
            AgentKind.PREFETCHER,
            "Gmail's prefetcher",
            "Gmail's prefetcher (an old Chrome 42 / Edge 12 agent) loaded this before the"
            " recipient opened the email",
            "gmail_prefetch",
        )
    return None


def _named_machine(low: str) -> AgentClass | None:
    """A machine found by name in one of the tables."""
    if entry := machines.IMAGE_PROXIES.first(low):
        return AgentClass(
            kind=AgentKind.IMAGE_PROXY,
            name=entry.name,
            detail=f"{entry.name}: a real open, without device or place",
            certainty=Certainty.HIGH,
            operator=entry.operator,
            rule=f"image_proxy:{entry.key}",
        )
    if entry := machines.LINK_PREVIEWS.first(low):
        if entry.key == "office_check":
            detail = (
                "Microsoft Office checked the link before opening it (Office link check);"
                " the browser visit that may follow is counted on its own"
            )
        else:
            detail = (
                f"Link preview by {entry.name}: the link was shown or shared there, not followed"
            )
        return _machine(AgentKind.LINK_PREVIEW, entry.name, detail, f"link_preview:{entry.key}")
    if entry := machines.SECURITY.first(low):
        return _machine(
            AgentKind.SCANNER,
            entry.name,
            f"Security scanner ({entry.name}) checked the email, not a person",
            f"security:{entry.key}",
        )
    if entry := machines.SERVICE_FETCHERS.first(low):
        return _machine(
            AgentKind.SCANNER,
            entry.name,
            f"Fetched by {entry.name}, an automated service, not a person",
            f"service:{entry.key}",
        )
    return None


def _unnamed_machine(agent: str, low: str) -> AgentClass | None:
    """A machine recognised by how it is written: a tool's name, a robot word, a contact."""
    if m := (machines.LIBRARY_START.match(low) or machines.LIBRARY.search(low)):
        name = _token(agent[m.start() :])
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, a programming tool used by scripts and link checkers,"
            " not by a person",
            "library",
        )
    if m := machines.BOT_WORD.search(low):
        name = _token(_word_around(agent, m.start(), m.end()))
        return _machine(
            AgentKind.SCANNER, name, f"Fetched by {name}, an automated robot", "bot_word"
        )
    if m := machines.COMPATIBLE.search(low):
        name = _token(agent[m.start(1) : m.end(1)])
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, an automated service (it introduces itself the way robots do)",
            "compatible",
            Certainty.MEDIUM,
        )
    if machines.CONTACT.search(low):
        name = _token(agent)
        return _machine(
            AgentKind.SCANNER,
            name,
            f"Fetched by {name}, an automated service (its agent carries a web or mail address)",
            "contact",
            Certainty.MEDIUM,
        )
    return None


def _person_agent(agent: str, low: str) -> AgentClass:
    """A person's mail program, browser or app; unknown programs count as people, unsure."""
    platform = people.platform_of(low)
    if entry := people.MAIL_CLIENTS.first(low):
        return _person(
            AgentKind.MAIL_CLIENT, entry.name, platform, Certainty.HIGH, f"mail:{entry.key}"
        )
    if people.APPLE_MAIL.fullmatch(low):
        return _person(AgentKind.APPLE_MAIL, "Apple Mail", platform, Certainty.MEDIUM, "apple_mail")
    if entry := people.IN_APP.first(low):
        return _person(
            AgentKind.BROWSER, entry.name, platform, Certainty.MEDIUM, f"in_app:{entry.key}"
        )
    if entry := people.BROWSERS.first(low):
        return _person(
            AgentKind.BROWSER, entry.name, platform, Certainty.HIGH, f"browser:{entry.key}"
        )
    if m := people.CFNETWORK.search(low):
        app = _token(unquote(agent[m.start(1) : m.end(1)]).replace(" ", "_")).replace("_", " ")
        return _person(
            AgentKind.APP, f"the {app} app", platform or "an Apple device", Certainty.MEDIUM, "app"
        )
    if people.DALVIK.search(low):
        return _person(AgentKind.APP, "an app", "Android", Certainty.MEDIUM, "app")
    if people.GENERIC_BROWSER.search(low):
        return _person(AgentKind.BROWSER, "a web browser", platform, Certainty.MEDIUM, "browser")
    return _person(
        AgentKind.UNKNOWN, "a program we do not recognise", platform, Certainty.LOW, "unknown"
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
    return (
        _special(low)
        or _named_machine(low)
        or _unnamed_machine(agent, low)
        or _person_agent(agent, low)
    )
