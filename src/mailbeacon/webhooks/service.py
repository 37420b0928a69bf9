"""Webhook endpoints: who may see and change them, where they may point, their secrets,
the delivery log, and "Send test event".

A user manages their own endpoints (their own email's events); an admin also the
organisation's, which hear about every user's email. Another user's endpoint does
not exist for a member ("not found"), as another user's email does not.

The secret is made here (``whsec_`` and 32 random bytes in base64, as the Standard
Webhooks specification describes), sealed with the installation's credentials key
for the worker to sign with, and shown once, in the answer that created it.
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Sequence

from sqlalchemy.orm import Session

from mailbeacon.config import Settings
from mailbeacon.db import after_commit
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.credentials import CredentialBox
from mailbeacon.kit.cursors import decode_cursor, encode_cursor
from mailbeacon.kit.errors import Forbidden, InvalidInput, NotFound
from mailbeacon.models import User, WebhookEndpoint, WebhookScope
from mailbeacon.webhooks import repository
from mailbeacon.webhooks.delivery import (
    BadReceiverUrl,
    parse_receiver_url,
    plain_http_allowed,
    refusal_before_lookup,
    webhook_policy,
)
from mailbeacon.webhooks.events import SUBSCRIBABLE, EventType, Fact, WebhooksDue
from mailbeacon.webhooks.schemas import (
    DeliveryOut,
    DeliveryPage,
    EndpointIn,
    EndpointOut,
    EndpointPatch,
)

SECRET_BYTES = 32
LOG_PAGE = 50
MAX_LOG_PAGE = 200
# Endpoints one user may have (their own and, for an admin, the organisation's).
MAX_ENDPOINTS = 20


class WebhookNotFound(NotFound):
    """No such endpoint among those the user may see."""


class InvalidWebhook(InvalidInput):
    summary = "invalid webhook"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")


def endpoint_out(endpoint: WebhookEndpoint) -> EndpointOut:
    return EndpointOut(
        id=endpoint.id,
        url=endpoint.url,
        description=endpoint.description,
        events=endpoint.event_types.split(),
        every_open=endpoint.every_open,
        scope=endpoint.scope,
        enabled=endpoint.enabled,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        last_delivered_at=endpoint.last_delivered_at,
        created_at=endpoint.created_at,
        updated_at=endpoint.updated_at,
    )


def check_url(url: str, settings: Settings) -> str:
    """The URL if a webhook may point there as far as can be told without a lookup;
    the address rules are applied again, after resolving, on every delivery."""
    url = url.strip()
    try:
        receiver = parse_receiver_url(url)
    except BadReceiverUrl as exc:
        raise InvalidWebhook({"url": [str(exc)]}) from exc
    if receiver.scheme == "http" and not plain_http_allowed(settings):
        raise InvalidWebhook({"url": ["The URL must begin with https://."]})
    refused = refusal_before_lookup(receiver, webhook_policy(settings))
    if refused:
        raise InvalidWebhook({"url": [refused]})
    return url


def _event_types(events: Sequence[EventType]) -> str:
    unknown = [str(e) for e in events if e not in SUBSCRIBABLE]
    if unknown:
        raise InvalidWebhook({"events": [f"Not an event to subscribe to: {', '.join(unknown)}."]})
    chosen = set(events)
    return " ".join(str(e) for e in SUBSCRIBABLE if e in chosen)


class WebhookService:
    def list_endpoints(self, session: Session, user: User) -> list[WebhookEndpoint]:
        """The user's own endpoints, and the organisation's for an admin."""
        return repository.visible_endpoints(session, user)

    def get_endpoint(self, session: Session, user: User, endpoint_id: int) -> WebhookEndpoint:
        """One endpoint the user may see and manage."""
        found = repository.get_endpoint(session, endpoint_id)
        if found is None or not _may_manage(user, found):
            raise WebhookNotFound(endpoint_id)
        return found

    def create_endpoint(
        self,
        session: Session,
        user: User,
        data: EndpointIn,
        *,
        settings: Settings,
        credentials: CredentialBox,
    ) -> tuple[WebhookEndpoint, str]:
        """Add an endpoint; returns it and its secret (never shown again)."""
        if data.scope == WebhookScope.ORGANISATION and not user.is_admin:
            raise Forbidden("Only an admin of your organisation may add its webhooks.")
        url = check_url(data.url, settings)
        types = _event_types(data.events)
        if len(repository.visible_endpoints(session, user)) >= MAX_ENDPOINTS:
            raise InvalidWebhook({"url": [f"You have {MAX_ENDPOINTS} endpoints already."]})
        secret = new_secret()
        now = utcnow()
        endpoint = WebhookEndpoint(
            user_id=user.id,
            organisation_id=user.organisation_id,
            scope=data.scope,
            url=url,
            description=data.description,
            event_types=types,
            every_open=data.every_open,
            secret_sealed=credentials.seal(secret),
            enabled=True,
            disabled_reason="",
            created_at=now,
            updated_at=now,
        )
        repository.add(session, endpoint)
        return endpoint, secret

    def update_endpoint(
        self,
        session: Session,
        user: User,
        endpoint_id: int,
        data: EndpointPatch,
        *,
        settings: Settings,
    ) -> WebhookEndpoint:
        """Change an endpoint; enabling a disabled one starts afresh (no failing streak)."""
        endpoint = self.get_endpoint(session, user, endpoint_id)
        if data.url is not None:
            endpoint.url = check_url(data.url, settings)
        if data.description is not None:
            endpoint.description = data.description
        if data.events is not None:
            endpoint.event_types = _event_types(data.events)
        if data.every_open is not None:
            endpoint.every_open = data.every_open
        now = utcnow()
        if data.enabled is True and not endpoint.enabled:
            endpoint.enabled = True
            endpoint.disabled_at = None
            endpoint.disabled_reason = ""
            endpoint.failing_since = None
        elif data.enabled is False and endpoint.enabled:
            endpoint.enabled = False
            endpoint.disabled_at = now
            endpoint.disabled_reason = "Disabled by its owner."
            repository.fail_waiting(
                session.connection(), [endpoint.id], "Not sent: the endpoint was disabled."
            )
        endpoint.updated_at = now
        session.flush()
        return endpoint

    def delete_endpoint(self, session: Session, user: User, endpoint_id: int) -> None:
        """Remove an endpoint with its delivery log."""
        repository.delete_endpoint(session, self.get_endpoint(session, user, endpoint_id))

    def send_test(self, session: Session, user: User, endpoint_id: int) -> str:
        """Queue a ``webhook.test`` event for this endpoint only; returns its webhook-id.

        A disabled endpoint gets it too: testing is how its owner sees it works again.
        """
        endpoint = self.get_endpoint(session, user, endpoint_id)
        now = utcnow()
        fact = Fact(
            EventType.TEST,
            user.id,
            now,
            {
                "endpoint": {"id": endpoint.id, "url": endpoint.url},
                "user": {"id": user.id, "email": user.email},
                "text": "A test event from mailbeacon: the signature verified, all is well.",
            },
        )
        repository.record_for(session.connection(), [(fact, [endpoint.id])], now)
        after_commit(session, WebhooksDue())
        return fact.uid

    def deliveries(
        self,
        session: Session,
        user: User,
        endpoint_id: int,
        *,
        before: str | None = None,
        limit: int = LOG_PAGE,
    ) -> DeliveryPage:
        """The endpoint's delivery log, newest first, a page at a time."""
        endpoint = self.get_endpoint(session, user, endpoint_id)
        limit = max(1, min(limit, MAX_LOG_PAGE))
        found = repository.delivery_page(session, endpoint.id, decode_cursor(before), limit + 1)
        items = [
            DeliveryOut(
                id=r.id,
                webhook_id=r.uid,
                type=r.type,
                status=r.status,
                attempts=r.attempts,
                response_status=r.response_status,
                error=r.last_error,
                created_at=r.created_at,
                last_attempt_at=r.last_attempt_at,
                next_attempt_at=r.next_attempt_at,
                delivered_at=r.delivered_at,
            )
            for r in found[:limit]
        ]
        last = items[-1] if items and len(found) > limit else None
        return DeliveryPage(
            items=items,
            older_cursor=encode_cursor(last.created_at, last.id) if last else None,
        )


def _may_manage(user: User, endpoint: WebhookEndpoint) -> bool:
    if endpoint.scope == WebhookScope.ORGANISATION:
        return user.is_admin and endpoint.organisation_id == user.organisation_id
    return endpoint.user_id == user.id


webhook_service = WebhookService()
