"""The organisation's privacy policy, and what it says about each copy at send time.

:class:`ConsentRules` implements the mail domain's ``ConsentPolicy`` protocol
(``mail/ports.py``; the composition root hands it over): for each recipient of
an email it rules whether the copy is tracked, and the opt-out footer a tracked
copy carries. The order of the rules, first match wins:

1. the organisation's tracking is ``off``: untracked, ``disabled_by_org``;
2. the recipient refused or withdrew consent: untracked, ``no_consent``,
   whatever the policy (they said no);
3. the address was erased at its owner's request and no consent was given
   since: untracked, ``no_consent``;
4. consent is required and not granted: untracked, ``no_consent`` (not for the
   built-in demo mailbox, which no person outside this server receives);
5. the organisation's tracking is ``aggregate``: tracked, ``aggregate``;
6. otherwise tracked as the sender's switches say.
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from mailbeacon.kit.errors import NotFound
from mailbeacon.models import ConsentState, Organisation, TrackingDecision, TrackingMode
from mailbeacon.privacy import audit, repository
from mailbeacon.privacy.audit import Action, Actor
from mailbeacon.privacy.keys import PrivacyKeys
from mailbeacon.privacy.schemas import PolicyIn, PolicyOut

OPT_OUT_PATH = "/p/opt-out/"

OFF_REASON = "Tracking is switched off for your organisation (Settings > Privacy)."
REFUSED_REASON = "This recipient refused to be tracked: no pixel, links as written."
WITHDRAWN_REASON = "This recipient withdrew their consent to tracking: no pixel, links as written."
ERASED_REASON = (
    "This address was erased at its owner's request: it is not tracked unless they consent again."
)
NO_CONSENT_REASON = (
    "No recorded consent to tracking from this recipient, and your organisation requires "
    "it: no pixel, links as written."
)
AGGREGATE_REASON = (
    "Counted anonymously: your organisation keeps how often each email is opened and "
    "clicked, never by whom."
)


class OrganisationNotFound(NotFound):
    """No such organisation."""


@dataclass(frozen=True, slots=True)
class CopyRuling:
    """The policy's word on one copy (the shape of ``mail.ports.CopyRule``)."""

    decision: TrackingDecision | None
    reason: str
    tracked: bool
    footer_html: str = ""
    footer_text: str = ""


def _untracked(decision: TrackingDecision, reason: str) -> CopyRuling:
    return CopyRuling(decision, reason, tracked=False)


def policy_out(org: Organisation) -> PolicyOut:
    return PolicyOut(
        organisation=org.name,
        tracking=TrackingMode(org.tracking_mode),
        consent_required=org.consent_required,
        opt_out_footer=org.opt_out_footer,
        retention_days=org.retention_days,
        store_network=org.store_network,
        delete_events_on_withdrawal=org.delete_events_on_withdrawal,
        privacy_contact=org.privacy_contact,
    )


def _organisation(session: Session, organisation_id: int) -> Organisation:
    org = repository.organisation(session, organisation_id)
    if org is None:
        raise OrganisationNotFound(organisation_id)
    return org


def read_policy(session: Session, actor: Actor) -> PolicyOut:
    """The organisation's policy (admins only)."""
    audit.require_admin(actor, "see the privacy settings")
    return policy_out(_organisation(session, actor.organisation_id))


def update_policy(session: Session, keys: PrivacyKeys, actor: Actor, data: PolicyIn) -> PolicyOut:
    """Change the policy (admins only); fields left out stay as they are. The change is in
    the audit log, each field with its old and new value."""
    audit.require_admin(actor, "change the privacy settings")
    org = _organisation(session, actor.organisation_id)
    before = policy_out(org).model_dump(mode="json")
    wanted = data.model_dump(exclude_none=True)
    columns = {"tracking": "tracking_mode"}
    for name, value in wanted.items():
        setattr(org, columns.get(name, name), value)
    session.flush()
    after = policy_out(org)
    changes: dict[str, Any] = {
        name: [before[name], value]
        for name, value in after.model_dump(mode="json").items()
        if before[name] != value
    }
    if changes:
        audit.record(session, keys, actor, Action.POLICY_CHANGED, detail=changes)
    return after


class ConsentRules:
    """The send-time gate: implements ``mail.ports.ConsentPolicy``."""

    def __init__(self, keys: PrivacyKeys, base_url: str) -> None:
        self.keys = keys
        self.base_url = base_url.rstrip("/")

    def opt_out_url(self, contact_id: int) -> str:
        return f"{self.base_url}{OPT_OUT_PATH}{self.keys.opt_out_token(contact_id)}"

    def rules(
        self,
        session: Session,
        organisation_id: int,
        recipients: Mapping[str, int | None],
        *,
        demo: bool,
    ) -> dict[str, CopyRuling]:
        """The ruling for each recipient (see the module's docstring for the order)."""
        org = repository.organisation(session, organisation_id)
        if org is None or not recipients:
            return {}
        if org.tracking_mode == TrackingMode.OFF:
            off = _untracked(TrackingDecision.DISABLED_BY_ORG, OFF_REASON)
            return dict.fromkeys(recipients, off)
        states = repository.consent_states(session, org.id, recipients.keys())
        keyed = {self.keys.address_key(org.id, address): address for address in recipients}
        erased = {keyed[k] for k in repository.erased_keys(session, org.id, keyed.keys())}
        aggregate = org.tracking_mode == TrackingMode.AGGREGATE
        out: dict[str, CopyRuling] = {}
        for address, contact_id in recipients.items():
            state = states.get(address, ConsentState.UNKNOWN)
            if state == ConsentState.REFUSED:
                out[address] = _untracked(TrackingDecision.NO_CONSENT, REFUSED_REASON)
            elif state == ConsentState.WITHDRAWN:
                out[address] = _untracked(TrackingDecision.NO_CONSENT, WITHDRAWN_REASON)
            elif address in erased and state != ConsentState.GRANTED:
                out[address] = _untracked(TrackingDecision.NO_CONSENT, ERASED_REASON)
            elif org.consent_required and state != ConsentState.GRANTED and not demo:
                out[address] = _untracked(TrackingDecision.NO_CONSENT, NO_CONSENT_REASON)
            else:
                footer_html = footer_text = ""
                if org.opt_out_footer and contact_id is not None:
                    footer_html, footer_text = self.footer(org, contact_id)
                out[address] = CopyRuling(
                    TrackingDecision.AGGREGATE if aggregate else None,
                    AGGREGATE_REASON if aggregate else "",
                    tracked=True,
                    footer_html=footer_html,
                    footer_text=footer_text,
                )
        return out

    def footer(self, org: Organisation, contact_id: int) -> tuple[str, str]:
        """The opt-out footer of a tracked copy: HTML and plain text. The link is never
        tracked itself (it is added after instrumentation)."""
        url = self.opt_out_url(contact_id)
        if org.tracking_mode == TrackingMode.AGGREGATE:
            what = "counts, without recording who, how often this email is opened and its links"
            what += " are clicked"
        else:
            what = "records when this email is opened and which of its links are clicked"
        sentence = f"{org.name} {what}."
        html_footer = (
            '<p style="margin:24px 0 0;font-size:12px;line-height:1.4;color:#6b7280">'
            f"{html.escape(sentence)} "
            f'<a href="{html.escape(url)}" style="color:#6b7280">Don\u2019t track me</a></p>'
        )
        text_footer = f"--\n{sentence}\nDon't track me: {url}"
        return html_footer, text_footer
