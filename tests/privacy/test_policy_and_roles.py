"""Roles and the organisation's privacy policy: the first user is the admin, only admins
see and change the policy (pages and API), every change is audited."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from mailbeacon import cli
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.models import Organisation, User
from tests.client import csrf_of

pytestmark = pytest.mark.asyncio


def roles(db: Database) -> dict[str, str]:
    with db.sessions() as s:
        return {u.email: u.role for u in s.scalars(select(User))}


async def test_the_first_user_of_an_organisation_is_its_admin(
    app: MailbeaconApp,
    admin: httpx.AsyncClient,
    member: httpx.AsyncClient,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert roles(app.runtime.database) == {
        "alice@example.com": "admin",
        "mo@example.com": "member",
    }
    monkeypatch.setenv("MAILBEACON_DATABASE_URL", settings.database_url())
    monkeypatch.setenv("MAILBEACON_DATA_DIR", str(Path(settings.DATA_DIR)))
    for email, extra in (("pat@example.com", ["--admin"]), ("sam@example.com", [])):
        monkeypatch.setattr("sys.stdin", io.StringIO("a very good password\n"))
        args = ["user", "create", "--email", email, "--org", "Privacy Co", "--password-stdin"]
        assert cli.main([*args, *extra]) == 0
    assert "as its member" in capsys.readouterr().out
    found = roles(app.runtime.database)
    assert (found["pat@example.com"], found["sam@example.com"]) == ("admin", "member")
    # New organisations ask for consent and add the opt-out footer.
    with app.runtime.database.sessions() as s:
        org = s.scalars(select(Organisation).where(Organisation.name == "Privacy Co")).one()
    assert (org.consent_required, org.opt_out_footer, org.tracking_mode) == (
        True,
        True,
        "individual",
    )
    assert org.retention_days == 395 and org.store_network


async def test_a_member_cannot_see_or_change_the_policy(
    app: MailbeaconApp, admin: httpx.AsyncClient, member: httpx.AsyncClient
) -> None:
    assert (await member.get("/settings/privacy")).status_code == 403
    assert (await member.get("/settings/audit")).status_code == 403
    assert (await member.get("/api/org/privacy")).status_code == 403
    r = await member.put("/api/org/privacy", json={"tracking": "off"})
    assert r.status_code == 403 and "admin" in r.json()["error"]
    page = await member.get("/settings/email-sync")
    r = await member.post(
        "/settings/privacy",
        data={"csrf_token": csrf_of(page.text), "tracking": "off", "retention_days": "1"},
    )
    assert r.status_code == 403
    assert 'href="/settings/privacy"' not in page.text  # not offered either
    policy = (await admin.get("/api/org/privacy")).json()
    assert policy["tracking"] == "individual" and policy["retention_days"] == 395


async def test_an_admin_changes_the_policy_and_the_change_is_audited(
    app: MailbeaconApp, admin: httpx.AsyncClient
) -> None:
    r = await admin.put(
        "/api/org/privacy",
        json={"tracking": "aggregate", "retention_days": 30, "privacy_contact": "dpo@example.com"},
    )
    assert r.status_code == 200
    assert r.json() == {
        "organisation": "Privacy Co",
        "tracking": "aggregate",
        "consent_required": True,
        "opt_out_footer": True,
        "retention_days": 30,
        "store_network": True,
        "delete_events_on_withdrawal": False,
        "privacy_contact": "dpo@example.com",
    }
    bad = await admin.put("/api/org/privacy", json={"retention_days": 0, "tracking": "spy"})
    assert bad.status_code == 422
    # The form: every switch as posted (an unticked box is off).
    page = await admin.get("/settings/privacy")
    assert 'value="aggregate" checked' in page.text
    r = await admin.post(
        "/settings/privacy",
        data={
            "csrf_token": csrf_of(page.text),
            "tracking": "individual",
            "consent_required": "true",
            "retention_days": "400",
            "privacy_contact": "",
        },
    )
    assert r.status_code == 303
    policy = (await admin.get("/api/org/privacy")).json()
    assert (policy["tracking"], policy["opt_out_footer"], policy["store_network"]) == (
        "individual",
        False,
        False,
    )
    log = (await admin.get("/api/audit")).json()["items"]
    changes = [e for e in log if e["action"] == "policy.changed"]
    assert len(changes) == 2
    assert '"retention_days": [395, 30]' in changes[1]["detail"]
    assert changes[0]["actor"] == "alice@example.com" and changes[0]["channel"] == "web"
    bad_form = await admin.post(
        "/settings/privacy",
        data={"csrf_token": csrf_of(page.text), "tracking": "individual", "retention_days": "x"},
    )
    assert bad_form.status_code == 422 and "Keep opens and clicks for" in bad_form.text
