"""contact.consent_changed comes from the transaction that records the consent (the
privacy domain's in-transaction events), to every endpoint of the organisation that
asked; erasing a contact erases the webhook events that named them."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from sqlalchemy import func, select

from mailbeacon.models import (
    ConsentMethod,
    ConsentRecord,
    ConsentState,
    Contact,
    User,
    WebhookEvent,
    WebhookScope,
)
from mailbeacon.privacy import consent, erasure
from mailbeacon.privacy.audit import Actor, Channel
from mailbeacon.privacy.schemas import ConsentIn
from mailbeacon.runtime import Runtime
from tests.factories.privacy import make_member, make_privacy_admin, record_consent
from tests.webhooks.conftest import add_endpoint, count
from tests.webhooks.receiver import receiver

pytestmark = pytest.mark.asyncio

ANN, BOB = "ann@example.org", "bob@example.org"
CONSENT = "contact.consent_changed"


def contact_id(runtime: Runtime, address: str) -> int:
    with runtime.database.sessions() as s:
        found = s.scalar(select(Contact.id).where(Contact.email == address))
    assert found is not None
    return found


async def test_a_consent_change_reaches_every_endpoint_of_the_organisation_that_asked(
    runtime: Runtime,
) -> None:
    db = runtime.database
    alice = make_privacy_admin(db)
    mo = make_member(db)
    olga = make_privacy_admin(db, email="olga@example.net", org="Other Org")
    async with receiver() as r:
        secrets = {
            "mo": add_endpoint(runtime, mo, r.url + "/mo", [CONSENT])[1],
            "org": add_endpoint(
                runtime, alice, r.url + "/org", [CONSENT], scope=WebhookScope.ORGANISATION
            )[1],
            "alice-replies": add_endpoint(runtime, alice, r.url + "/alice", ["reply.received"])[1],
            "olga": add_endpoint(runtime, olga, r.url + "/olga", [CONSENT])[1],
        }
        record_consent(db, runtime, mo, ANN, ConsentState.GRANTED)
        with db.unit_of_work() as s:
            assert consent.withdraw_by_recipient(
                s,
                runtime.privacy_keys,
                contact_id(runtime, ANN),
                network="192.0.2.0/24",
                user_agent="Mozilla/5.0 Firefox/133.0",
            )
        await runtime.make_webhook_worker().run_once()

    by_path: dict[str, list[Any]] = defaultdict(list)
    for request in r.app.requests:
        name = request.path.rsplit("/", 1)[1]
        by_path[name].append(request.verified(secrets[{"alice": "alice-replies"}.get(name, name)]))
    assert set(by_path) == {"mo", "org"}, "only the organisation's subscribed endpoints hear it"
    for name in ("mo", "org"):
        granted, withdrawn = by_path[name]
        assert granted["type"] == withdrawn["type"] == CONSENT
        assert granted["data"]["contact"] == {"address": ANN}
        assert granted["data"]["consent"]["state"] == "granted"
        assert granted["data"]["consent"]["previous_state"] == "unknown"
        assert granted["data"]["consent"]["method"] == "web_form"
        assert granted["data"]["consent"]["recorded_by"] == "mo@example.com"
        assert withdrawn["data"]["consent"]["state"] == "withdrawn"
        assert withdrawn["data"]["consent"]["previous_state"] == "granted"
        assert withdrawn["data"]["consent"]["method"] == "opt_out_page"
        # The proof (network, agent) stays in mailbeacon: the event says what changed.
        assert "192.0.2" not in str(withdrawn) and "Firefox" not in str(withdrawn)


async def test_a_consent_change_that_rolls_back_leaves_no_event(runtime: Runtime) -> None:
    db = runtime.database
    alice = make_privacy_admin(db)
    add_endpoint(runtime, alice, "http://127.0.0.1:9/hooks", [CONSENT])

    class Abandoned(Exception):
        pass

    def change_then_fail() -> None:
        with db.unit_of_work() as s:
            consent.set_consent(
                s,
                runtime.privacy_keys,
                Actor.of(s.get_one(User, alice), Channel.WEB),
                ANN,
                ConsentIn(state=ConsentState.GRANTED, method=ConsentMethod.VERBAL, text="Yes."),
            )
            raise Abandoned

    with pytest.raises(Abandoned):
        change_then_fail()
    assert count(db, "consent_records") == 0
    assert count(db, "webhook_events") == 0
    assert count(db, "webhook_deliveries") == 0
    # The same change committed does make one.
    record_consent(db, runtime, alice, ANN)
    assert count(db, "webhook_events") == 1


async def test_erasing_a_contact_erases_the_webhook_events_that_named_them(
    runtime: Runtime,
) -> None:
    db = runtime.database
    alice = make_privacy_admin(db)
    add_endpoint(runtime, alice, "http://127.0.0.1:9/hooks", [CONSENT])
    # Upper case as typed: the event must be found whatever the case it names.
    record_consent(db, runtime, alice, "Ann@Example.org")
    record_consent(db, runtime, alice, ANN, ConsentState.REFUSED)
    record_consent(db, runtime, alice, BOB)
    assert count(db, "webhook_events") == 3
    with db.unit_of_work() as s:
        org = s.scalar(select(Contact.organisation_id).where(Contact.email == ANN))
        assert org is not None
        erasure.erase_contact(
            s, runtime.privacy_keys, Actor(org, None, "operator", Channel.CLI), ANN
        )
    with db.sessions() as s:
        payloads = list(s.scalars(select(WebhookEvent.payload)))
        records = s.scalar(select(func.count()).select_from(ConsentRecord))
    assert len(payloads) == 1 and BOB in payloads[0]
    assert not any("ann@" in p.lower() for p in payloads)
    assert count(db, "webhook_deliveries") == 1, "the erased events' deliveries went too"
    assert records == 1
