"""Attacks on the privacy domain: scripts with weak tokens, colleagues reaching for admin
powers, other organisations reaching for contacts, strangers reaching for the opt-out
of someone else."""

from __future__ import annotations

import re

import httpx
import pytest
from sqlalchemy import select

from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import Contact, User
from tests.client import make_client, sign_in
from tests.factories.privacy import make_member, make_privacy_admin, record_consent
from tests.privacy.conftest import admin, app, member

__all__ = ["admin", "app", "member"]  # the fixtures: Privacy Co's admin and member

pytestmark = pytest.mark.asyncio

ANN = "ann@example.org"
# Every privacy route that changes something, or hands out every contact's data or the
# organisation's settings: closed to tokens minted to read or to send.
ADMIN_ONLY = [
    ("PUT", f"/api/contacts/{ANN}/consent", {"state": "refused", "method": "verbal"}),
    ("DELETE", f"/api/contacts/{ANN}", None),
    ("POST", "/api/contacts/import", {"csv": "address,state\nx@example.org,refused\n"}),
    ("PUT", "/api/org/privacy", {"tracking": "off"}),
    ("GET", f"/api/contacts/{ANN}/export", None),
    ("GET", "/api/org/privacy", None),
    ("GET", "/api/audit", None),
    ("GET", "/api/audit/export", None),
]


async def mint(client: httpx.AsyncClient, csrf: str, scope: str) -> str:
    page = await client.post(
        "/settings/api-tokens",
        data={"csrf_token": csrf, "name": scope, "scopes": scope, "scopes_offered": "true",
              "expires_in_days": "30"},
    )  # fmt: skip
    found = re.search(r'id="new-token">([^<]+)<', page.text)
    assert found, page.text
    return found.group(1)


async def test_read_and_send_tokens_cannot_change_consent_policy_or_read_everyone(
    app: MailbeaconApp, admin: httpx.AsyncClient, database: Database
) -> None:
    with database.sessions() as s:
        alice = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice is not None
    record_consent(database, app.runtime, alice, ANN)
    csrf = admin.headers["x-csrf-token"]
    tokens = [await mint(admin, csrf, "read"), await mint(admin, csrf, "send")]
    async with make_client(app) as script:
        for token in tokens:
            auth = {"authorization": f"Bearer {token}"}
            for method, path, body in ADMIN_ONLY:
                r = await script.request(method, path, headers=auth, json=body)
                assert r.status_code == 403, (method, path, r.status_code)
        # A read token reads what a read is for: the contacts and one contact.
        read = {"authorization": f"Bearer {tokens[0]}"}
        assert (await script.get(f"/api/contacts/{ANN}", headers=read)).status_code == 200
    with database.sessions() as s:
        assert s.scalars(select(Contact.consent_state)).one() == "granted"


async def test_another_organisation_finds_none_of_our_contacts(
    app: MailbeaconApp, admin: httpx.AsyncClient, database: Database
) -> None:
    with database.sessions() as s:
        alice = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice is not None
    record_consent(database, app.runtime, alice, ANN)
    make_privacy_admin(database, "eve@example.net", org="Rival Ltd")
    async with make_client(app, ip="198.51.100.66") as eve:
        eve.headers["x-csrf-token"] = await sign_in(eve, "eve@example.net")
        assert (await eve.get("/api/contacts")).json()["items"] == []
        for method, path in (
            ("GET", f"/api/contacts/{ANN}"),
            ("GET", f"/api/contacts/{ANN}/export"),
            ("DELETE", f"/api/contacts/{ANN}"),
            ("GET", f"/contacts/{ANN}"),
        ):
            r = await eve.request(method, path)
            assert r.status_code == 404, (method, path)
        # Recording a consent for that address makes Rival's own contact, not ours.
        r = await eve.put(
            f"/api/contacts/{ANN}/consent", json={"state": "withdrawn", "method": "verbal"}
        )
        assert r.status_code == 200
    with database.sessions() as s:
        states = sorted(s.scalars(select(Contact.consent_state).where(Contact.email == ANN)))
    assert states == ["granted", "withdrawn"]


async def test_a_member_cannot_reach_admin_powers_through_any_door(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient, database: Database
) -> None:
    with database.sessions() as s:
        alice = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice is not None
    record_consent(database, app.runtime, alice, ANN)
    for method, path, body in ADMIN_ONLY:
        if path.endswith("/consent"):
            continue  # any user may record a consent they were told
        r = await member.request(method, path, json=body)
        assert r.status_code == 403, (method, path, r.status_code)
    for path in ("/settings/privacy", "/settings/audit", "/settings/audit.csv", "/contacts/import"):
        assert (await member.get(path)).status_code == 403, path


async def test_an_opt_out_stamp_made_for_one_contact_does_not_withdraw_another(
    app: MailbeaconApp, admin: httpx.AsyncClient, database: Database
) -> None:
    make_member(database)  # nothing to do with it: another user in the organisation
    with database.sessions() as s:
        alice = s.scalar(select(User.id).where(User.email == "alice@example.com"))
    assert alice is not None
    record_consent(database, app.runtime, alice, ANN)
    record_consent(database, app.runtime, alice, "bob@example.com")
    with database.sessions() as s:
        ids = {
            email: contact_id for email, contact_id in s.execute(select(Contact.email, Contact.id))
        }
    keys = app.runtime.privacy_keys
    bobs_stamp = keys.form_stamp(ids["bob@example.com"], utcnow())
    async with make_client(app, ip="192.0.2.80") as stranger:
        r = await stranger.post(
            f"/p/opt-out/{keys.opt_out_token(ids[ANN])}", data={"stamp": bobs_stamp}
        )
        assert r.status_code == 403
    with database.sessions() as s:
        assert set(s.scalars(select(Contact.consent_state))) == {"granted"}
