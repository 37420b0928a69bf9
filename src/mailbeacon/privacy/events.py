"""What the privacy domain tells the rest of the product, inside the transaction that
made the change (``db.in_transaction``): a contact's consent changed, a contact was
erased. Webhooks observe both (``contact.consent_changed``; erasing the events that
named the person), registered at the composition root; privacy never learns who.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from mailbeacon.models import ConsentMethod, ConsentState


@dataclass(frozen=True, slots=True)
class ConsentChanged:
    """A consent given, refused or withdrawn: one new record in a contact's history."""

    organisation_id: int
    address: str  # as the contact is kept: lower case
    state: ConsentState
    previous_state: ConsentState
    method: ConsentMethod
    recorded_at: datetime
    # Who recorded it, as the history shows it ("Sally <sally@…>", the opt-out page).
    recorded_by: str
    # The user who recorded it; None when the person did, on the opt-out page.
    user_id: int | None


@dataclass(frozen=True, slots=True)
class ContactErased:
    """Everything about ``address`` in the organisation is being erased: what other
    domains keep about the person must go in the same transaction."""

    organisation_id: int
    address: str  # lower case
