"""The hit-time gate: how much of a hit the pipeline may keep, per copy.

Implements ``tracking.events.HitGate``. It reads the policy and the consent
state inside each batch's own transaction, so a withdrawal or a policy change
applies to the very next hit after it commits, on every email ever sent. The
edge has answered already (the link redirected, the pixel was served): the
gate only decides what is stored.

* organisation tracking ``off``: nothing;
* the contact refused or withdrew: nothing;
* consent required and not granted (outside the demo mailbox): nothing;
* organisation tracking ``aggregate``: anonymous counts on the email only;
* the organisation keeps no network prefixes: everything but the prefix;
* otherwise everything.

Previews (``mailbeacon instrument``) belong to no organisation: everything.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy.orm import Session

from mailbeacon.models import ConsentState, TrackingMode
from mailbeacon.privacy import repository
from mailbeacon.tracking.events import Treatment

_SAID_NO = frozenset({ConsentState.REFUSED, ConsentState.WITHDRAWN})


class PrivacyGate:
    def screen(self, session: Session, copy_ids: Collection[int]) -> dict[int, Treatment]:
        """The treatment of each copy that is not kept whole (one query per batch)."""
        out: dict[int, Treatment] = {}
        # Unpacked by position: a row's attributes by name cost more than the rule itself,
        # and the consumer asks for thousands of copies a batch.
        for row in repository.gate_facts(session, list(copy_ids)):
            copy_id, user_id, mode, required, store, state, demo = tuple(row)
            treatment = _treatment(user_id, mode, required, store, state, demo)
            if treatment != Treatment.FULL:
                out[copy_id] = treatment
        return out


def _treatment(
    user_id: int | None,
    tracking_mode: str | None,
    consent_required: bool | None,
    store_network: bool | None,
    consent_state: str | None,
    is_demo: bool | None,
) -> Treatment:
    if user_id is None or tracking_mode is None:
        return Treatment.FULL
    state = consent_state or ConsentState.UNKNOWN
    if tracking_mode == TrackingMode.OFF or state in _SAID_NO:
        return Treatment.NOTHING
    if consent_required and state != ConsentState.GRANTED and not is_demo:
        return Treatment.NOTHING
    if tracking_mode == TrackingMode.AGGREGATE:
        return Treatment.ANONYMOUS
    if not store_network:
        return Treatment.WITHOUT_NETWORK
    return Treatment.FULL
