"""Requests to the JSON API that once got a server error, an undocumented answer, or
an answer that said less than the truth (each found by tests/security/test_api_fuzzing.py).

A number too large for the id columns, a NUL in a search, a boolean where a number
belongs: every one is answered as the OpenAPI document says, with a 4xx and the
shared error body, never a 500.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from mailbeacon.accounts.service import account_service
from mailbeacon.app import ErrorOut
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.db import Database
from mailbeacon.kit.ids import MAX_ROW_ID, MAX_SMALL_ROW_ID
from mailbeacon.models import User
from mailbeacon.models.account import TokenScope
from tests.factories.accounts import make_demo_sender
from tests.factories.mail import send_mail

pytestmark = pytest.mark.asyncio

BEYOND_64_BITS = 2**63
BEYOND_53_BITS = MAX_ROW_ID + 1
BEYOND_32_BITS = MAX_SMALL_ROW_ID + 1


def token_for(database: Database) -> dict[str, str]:
    """Sally, who sends through the demo mailbox, as a script with a token of every scope."""
    user_id = make_demo_sender(database)
    with database.unit_of_work() as s:
        _, token = account_service.create_api_token(
            s, s.get_one(User, user_id), "script", scopes=list(TokenScope)
        )
    return {"authorization": f"Bearer {token}"}


def error_body(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert isinstance(body, dict) and isinstance(body["error"], str) and body["error"], body
    return body


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", f"/api/mail/{BEYOND_64_BITS}", None),
        ("GET", f"/api/mail/{BEYOND_53_BITS}/events", None),
        ("GET", f"/api/mail/rows?ids=1&ids={BEYOND_64_BITS}", None),
        ("POST", f"/api/mail/1/copies/{BEYOND_64_BITS}/retry", None),
        ("POST", f"/api/notifications/{BEYOND_64_BITS}/read", None),
        ("POST", "/api/notifications/read", {"ids": [BEYOND_64_BITS]}),
        # Webhook endpoints are numbered by 32-bit integers on PostgreSQL.
        ("GET", f"/api/webhooks/{BEYOND_32_BITS}", None),
        ("GET", "/api/mail/0", None),
    ],
)
async def test_an_id_no_row_can_have_is_refused_422_not_a_server_error(
    client: httpx.AsyncClient, database: Database, method: str, path: str, body: object
) -> None:
    auth = token_for(database)
    r = await client.request(method, path, headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert error_body(r)["errors"], r.text


@pytest.mark.parametrize("path", ["/api/mail", "/api/contacts"])
async def test_a_nul_in_a_search_finds_nothing_instead_of_a_server_error(
    client: httpx.AsyncClient, app: MailbeaconApp, database: Database, path: str
) -> None:
    auth = token_for(database)
    with database.sessions() as s:
        user_id = s.query(User.id).scalar()
    send_mail(database, app.runtime, user_id, ("ann@example.org",), subject="Pricing")
    r = await client.get(path, params={"q": "ann\x00"}, headers=auth)
    assert r.status_code == 200, r.text
    # The NUL separates words like a space: "ann" is still searched for.
    assert len(r.json()["items"]) == 1, r.text


async def test_a_wrong_method_is_told_every_method_the_address_takes(
    client: httpx.AsyncClient, database: Database
) -> None:
    auth = token_for(database)
    for path, allowed in [
        ("/api/mailbox", "GET, HEAD, PUT"),
        ("/api/notifications/settings", "GET, HEAD, PUT"),
        ("/api/messages", "POST"),
    ]:
        r = await client.request("PATCH", path, headers=auth)
        assert r.status_code == 405 and r.headers["allow"] == allowed, (path, r.headers)
        error_body(r)


@pytest.mark.parametrize(
    "values",
    [
        {"notify_tracking": True, "quiet_minutes": False},
        {"notify_tracking": True, "quiet_minutes": "30"},
        {"notify_tracking": 1, "quiet_minutes": 30},
        {"notify_tracking": "yes", "quiet_minutes": 30},
    ],
)
async def test_notification_settings_take_only_the_types_their_document_names(
    client: httpx.AsyncClient, database: Database, values: dict[str, object]
) -> None:
    auth = token_for(database)
    before = (await client.get("/api/notifications/settings", headers=auth)).json()
    r = await client.put("/api/notifications/settings", json=values, headers=auth)
    assert r.status_code == 422, r.text
    assert (await client.get("/api/notifications/settings", headers=auth)).json() == before


async def test_every_api_operation_documents_its_errors_with_the_body_they_have(
    client: httpx.AsyncClient, database: Database
) -> None:
    document = (await client.get("/api/openapi.json")).json()
    assert document["components"]["schemas"]["ErrorOut"] == ErrorOut.model_json_schema()
    assert document["components"]["securitySchemes"]["apiToken"]["scheme"] == "bearer"
    assert "HTTPValidationError" not in document["components"]["schemas"]
    operations = [
        (method, path, operation)
        for path, item in document["paths"].items()
        if path.startswith("/api/")
        for method, operation in item.items()
    ]
    assert len(operations) > 15
    for method, path, operation in operations:
        assert operation["security"] == [{"apiToken": []}], (method, path)
        responses = operation["responses"]
        for status in ("401", "403", "503"):
            assert status in responses, (method, path, status)
        if operation.get("parameters") or "requestBody" in operation:
            assert "422" in responses, (method, path)
        for status, response in responses.items():
            if status.startswith(("4", "5")):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorOut"}, (method, path, status)
        assert responses["401"]["headers"]["WWW-Authenticate"]["required"] is True

    # The answers themselves have that body: a validation error, a missing token.
    auth = token_for(database)
    invalid = await client.get("/api/mail?limit=0", headers=auth)
    anonymous = await client.get("/api/mail")
    assert (invalid.status_code, anonymous.status_code) == (422, 401)
    for r in (invalid, anonymous):
        assert set(r.json()) <= set(ErrorOut.model_fields), r.text
        ErrorOut.model_validate(r.json(), strict=True)
    assert invalid.json()["errors"] == {"limit": ["Input should be greater than or equal to 1"]}


@pytest.mark.parametrize("field", ["smtp_username", "imap_username"])
async def test_a_nul_in_a_mailbox_user_name_is_refused_like_other_control_characters(
    client: httpx.AsyncClient, database: Database, field: str
) -> None:
    auth = token_for(database)
    mailbox = {
        "sender_address": "sally@example.com",
        "smtp_host": "127.0.0.1",
        "smtp_port": 2525,
        "smtp_security": "none",
        "imap_host": "127.0.0.1",
        "imap_port": 1143,
        "imap_security": "none",
        field: "sally\x00",
    }
    r = await client.put("/api/mailbox", json=mailbox, headers=auth)
    assert r.status_code == 422, r.text
    assert field in error_body(r)["errors"]
