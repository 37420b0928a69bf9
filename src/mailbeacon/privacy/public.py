"""The public "Don't track me" page under /p/, linked from every tracked copy's footer.

Anyone holding the link may read the page; no sign-in, no cookie, no script. It
says who tracks, what, why, on which legal basis, for how long, who receives it
and the person's rights (GDPR Art. 13), and offers one button.

**A GET never changes anything.** Security gateways, link previewers and
prefetching mail clients follow every link in an email; if reading the page
withdrew consent, a scanner would withdraw it for the person. Only the form's
POST does, and the form carries a stamp (``PrivacyKeys.form_stamp``) made when
the page was shown: a POST needs a stamp for the same contact, fresh, made by
this server, so it can only follow a GET of the page (without one: 403, as any
form without its CSRF token). That is the page's CSRF defence without cookies;
the link itself is the credential (an unguessable MAC), so a forged POST could
do nothing its sender could not do with the link. A second POST finds the
consent withdrawn already and records nothing more.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from mailbeacon.config import Settings
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.net import client_address
from mailbeacon.models import ConsentState, TrackingMode
from mailbeacon.privacy import consent
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.policy import OPT_OUT_PATH
from mailbeacon.web.deps import CsrfRejected, DbSession, provided, render

router = APIRouter(include_in_schema=False)

# The page reads nothing from elsewhere and runs nothing; its form posts to itself.
PUBLIC_CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "base-uri 'none'; frame-ancestors 'none'"
)
_HEADERS = {
    "content-security-policy": PUBLIC_CSP,
    "referrer-policy": "no-referrer",
    # The page is about one person: no search engine keeps it.
    "x-robots-tag": "noindex, nofollow",
}
_SAID_NO = (ConsentState.REFUSED, ConsentState.WITHDRAWN)


def network_prefix(address: str | None) -> str | None:
    """The network an address belongs to, as events keep it: /24 (IPv4) or /48 (IPv6)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


def _not_found(request: Request) -> Response:
    return render(
        request,
        "privacy/opt_out_gone.html",
        {},
        status_code=404,
        headers=_HEADERS,
    )


def _page(
    request: Request,
    session: DbSession,
    token: str,
    *,
    done: bool = False,
    expired: bool = False,
) -> Response:
    keys = provided(request, PrivacyKeys)
    contact_id = keys.read_opt_out_token(token)
    facts = consent.opt_out_page(session, contact_id) if contact_id is not None else None
    if facts is None or contact_id is None:
        return _not_found(request)
    org = facts.organisation
    return render(
        request,
        "privacy/opt_out.html",
        {
            "org": org,
            "aggregate": org.tracking_mode == TrackingMode.AGGREGATE,
            "stopped": facts.state in _SAID_NO,
            "done": done,
            "expired": expired,
            "statement": facts.statement,
            "stamp": keys.form_stamp(contact_id, utcnow()),
            "action": f"{OPT_OUT_PATH}{token}",
        },
        status_code=403 if expired else 200,
        headers=_HEADERS,
    )


@router.get(OPT_OUT_PATH + "{token}", response_class=HTMLResponse)
def opt_out_page(request: Request, session: DbSession, token: str, done: str = "") -> Response:
    """What is tracked and why, and the button to stop it; reading it changes nothing."""
    return _page(request, session, token, done=done == "1")


@router.post(OPT_OUT_PATH + "{token}", response_class=HTMLResponse)
def stop_tracking(
    request: Request,
    session: DbSession,
    token: str,
    stamp: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    """Withdraw consent, with proof (time, network prefix, agent); harmless to repeat."""
    keys = provided(request, PrivacyKeys)
    contact_id = keys.read_opt_out_token(token)
    # The stamp first, as every form's CSRF token is checked before anything else.
    if contact_id is None or not keys.stamp_is_valid(stamp, contact_id, utcnow()):
        if contact_id is None:
            raise CsrfRejected()
        # Nothing changed: the page again, with a fresh form and a word on why.
        return _page(request, session, token, expired=True)
    if consent.opt_out_page(session, contact_id) is None:
        return _not_found(request)
    client = client_address(
        request.client.host if request.client else None,
        request.headers.getlist("x-forwarded-for"),
        provided(request, Settings).proxy_hops,
    )
    consent.withdraw_by_recipient(
        session,
        keys,
        contact_id,
        network=network_prefix(client),
        user_agent=request.headers.get("user-agent", ""),
    )
    return RedirectResponse(f"{OPT_OUT_PATH}{token}?done=1", status_code=303)
