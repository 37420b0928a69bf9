"""Telling automatic replies (out of office, vacation, autoresponders) from people.

Headers decide first: RFC 3834 ``Auto-Submitted`` (any value but ``no``), the
de-facto ``X-Autoreply`` / ``X-Autorespond``, ``Precedence: auto_reply``, and
Apple's vacation marker. Microsoft Exchange sends its out-of-office replies
without Auto-Submitted, as ``X-Auto-Response-Suppress: All`` together with
``X-MS-Exchange-Inbox-Rules-Loop``; neither counts alone, since Outlook puts the
first on ordinary mail and inbox rules that merely forward add the second
(MS-OXCMAIL 2.2.3.2.14; Zammad's OutOfOfficeCheck draws the same line).

Subjects come next, and only their start: "Automatic reply:", "Automatische
Antwort:", "Out of Office" and their equivalents in the main European
languages. A person answering such a message writes "Re: Automatic reply: ...",
and the body is never read, so a human reply that quotes an out-of-office
notice, or says "I was out of office", stays a reply.
"""

from __future__ import annotations

import re
import unicodedata
from email.message import EmailMessage

# What Exchange, Outlook, Gmail, Apple Mail, Zimbra, Dovecot/Sieve and common
# webmails put first in the subject of an automatic reply, per language.
_AUTO_REPLY_PREFIXES = [
    # English
    r"automatic reply",
    r"auto(?:matic)?[- ]?(?:reply|response|responder)",
    r"autoreply",
    r"autorespons\w*",
    r"out of (?:the )?office(?: autoreply| reply| alert)?",
    r"away from (?:the )?office",
    r"vacation (?:reply|response|notice)",
    # German
    r"automatische antwort",
    r"automatische r\u00fcckantwort",
    r"abwesenheitsnotiz",
    r"abwesenheitsnachricht",
    r"automatische abwesenheitsnotiz",
    r"nicht im b\u00fcro",
    # French
    r"r\u00e9ponse automatique",
    r"reponse automatique",
    r"absence du bureau",
    r"absent du bureau",
    r"message d'absence",
    # Spanish
    r"respuesta autom\u00e1tica",
    r"respuesta automatica",
    r"fuera de (?:la )?oficina",
    # Italian
    r"risposta automatica",
    r"fuori (?:sede|ufficio)",
    # Dutch
    r"automatisch antwoord",
    r"afwezigheidsbericht",
    r"niet op kantoor",
    r"buiten kantoor",
    # Portuguese
    r"resposta autom\u00e1tica",
    r"resposta automatica",
    r"fora do escrit\u00f3rio",
    r"aus\u00eancia do escrit\u00f3rio",
    # Polish
    r"automatyczna odpowied\u017a",
    r"odpowied\u017a automatyczna",
    r"poza biurem",
    # Swedish
    r"automatiskt svar",
    r"fr\u00e5nvaro(?:meddelande)?",
    r"inte p\u00e5 kontoret",
    # Danish and Norwegian
    r"automatisk svar",
    r"autosvar",
    r"frav\u00e6r(?:ende|smelding|sbesked)?",
    r"ikke p\u00e5 kontoret",
    r"borte fra kontoret",
    # Finnish
    r"automaattinen vastaus",
    r"poissa toimistolta",
    r"poissaolo(?:viesti|ilmoitus)",
    # Czech
    r"automatick\u00e1 odpov\u011b\u010f",
    r"automaticka odpoved",
    r"mimo kancel\u00e1\u0159",
    r"nep\u0159\u00edtomnost",
]

# The prefix must open the subject (after an optional "[" tag bracket) and end
# there: a colon, a closing bracket, a dash or the end of the subject.
_SUBJECT_PREFIX = re.compile(
    r"^\s*\[?\s*(?:(?:" + "|".join(_AUTO_REPLY_PREFIXES) + r")\s*(?:[:\]\-\u2013]|$)"
    # Exchange 2003 and Zimbra write "Auto: <subject>"; bare "Auto" is a word too.
    r"|auto\s*:)",
    re.IGNORECASE,
)

# Words that suggest absence anywhere in a subject; enough only together with a
# header that marks the message as machine-sent (Precedence bulk/junk, a null
# return path).
_ABSENCE_WORDS = re.compile(
    r"\b(?:out of (?:the )?office|on (?:vacation|holiday|leave)|away until|"
    r"urlaub|abwesen\w*|vacances|cong\u00e9s?|vacaciones|ausente|assente|ferie|"
    r"afwezig|vakantie|f\u00e9rias|urlop|nieobecn\w*|semester|loma\w*|dovolen\w*|"
    r"thank you for your (?:e-?mail|message)|automatic|automatisch\w*|automatique)\b",
    re.IGNORECASE,
)


def _normalised(subject: str) -> str:
    # NFC so that "Réponse" typed as e + combining accent matches the pattern.
    return unicodedata.normalize("NFC", subject)


def auto_reply_reason(msg: EmailMessage, subject: str) -> str | None:
    """Why ``msg`` is an automatic reply (a short label), or None for a person's mail."""
    auto_submitted = _header(msg, "Auto-Submitted")
    if auto_submitted:
        value = re.split(r"[;(\s]", auto_submitted.strip(), maxsplit=1)[0].lower()
        if value and value != "no":
            return f"auto-submitted: {value}"
    for name in ("X-Autoreply", "X-Autorespond", "X-Autoresponder"):
        value = _header(msg, name)
        if value and value.strip().lower() not in ("no", "false", "0"):
            return name.lower()
    precedence = (_header(msg, "Precedence") or _header(msg, "X-Precedence")).strip().lower()
    if precedence == "auto_reply":
        return "precedence: auto_reply"
    if _header(msg, "X-Apple-Action").strip().upper() == "VACATION":
        return "x-apple-action: vacation"
    suppress = {
        v.strip().lower() for v in _header(msg, "X-Auto-Response-Suppress").split(",") if v.strip()
    }
    rules_loop = bool(_header(msg, "X-MS-Exchange-Inbox-Rules-Loop"))
    if rules_loop and suppress & {"all", "oof", "autoreply"}:
        return "exchange: auto-response"
    subject = _normalised(subject)
    if _SUBJECT_PREFIX.match(subject):
        return "subject"
    machine_sent = precedence in ("bulk", "junk") or _null_return_path(msg) or bool(suppress)
    listed = bool(_header(msg, "List-Id") or _header(msg, "List-Unsubscribe"))
    if machine_sent and not listed and not _is_reply_subject(subject):
        if _ABSENCE_WORDS.search(subject):
            return "subject and precedence"
        if _null_return_path(msg) and precedence in ("bulk", "junk"):
            return "null return path and precedence"
    return None


_REPLY_PREFIX = re.compile(
    r"^\s*(?:re|aw|sv|vs|antw|odp|r|ref|r\u00e9f|rif|res|rv|odg|v\u00e1|vl|atb|ynt)"
    r"\s*(?:\[\d+\])?\s*:",
    re.IGNORECASE,
)


def _is_reply_subject(subject: str) -> bool:
    return bool(_REPLY_PREFIX.match(subject))


def is_reply_subject(subject: str) -> bool:
    """True when the subject starts with a reply prefix in one of the usual languages."""
    return _is_reply_subject(_normalised(subject))


def _null_return_path(msg: EmailMessage) -> bool:
    value = _header(msg, "Return-Path").strip()
    return value in ("<>", "") and "Return-Path" in msg


def _header(msg: EmailMessage, name: str) -> str:
    try:
        value = msg.get(name)
    except (TypeError, ValueError, IndexError):
        return ""
    return "" if value is None else str(value)
