"""Webhook tests: a runtime whose receivers may be on loopback, and quick retries."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import DeliveryStatus, User, WebhookDelivery, WebhookScope
from mailbeacon.runtime import Runtime
from mailbeacon.webhooks.events import SUBSCRIBABLE
from mailbeacon.webhooks.schemas import EndpointIn
from mailbeacon.webhooks.service import webhook_service


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The suite's settings, with receivers allowed on loopback and retries 50 ms apart."""
    return settings.model_copy(
        update={
            "ALLOW_LOOPBACK_WEBHOOKS": True,
            "WEBHOOK_BACKOFF_SECONDS": 0.05,
            "WEBHOOK_TIMEOUT_SECONDS": 5.0,
            "DEMO_SMTP_PORT": 0,
        }
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(settings)
    yield rt
    rt.database.dispose()


def add_endpoint(
    runtime: Runtime,
    user_id: int,
    url: str,
    events: list[str] | None = None,
    *,
    every_open: bool = False,
    scope: WebhookScope = WebhookScope.USER,
) -> tuple[int, str]:
    """An endpoint as the API makes it; returns its id and secret."""
    with runtime.database.unit_of_work() as s:
        user = s.get(User, user_id)
        assert user is not None
        endpoint, secret = webhook_service.create_endpoint(
            s,
            user,
            EndpointIn.model_validate(
                {
                    "url": url,
                    "events": events or [str(t) for t in SUBSCRIBABLE],
                    "every_open": every_open,
                    "scope": scope,
                }
            ),
            settings=runtime.settings,
            credentials=runtime.credentials,
        )
        return endpoint.id, secret


def count(database: Database, table: str) -> int:
    with database.engine.connect() as conn:
        return int(conn.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar() or 0)


@pytest.fixture
def patient(settings: Settings) -> Iterator[Runtime]:
    """A runtime whose retries wait a minute, so that "not due yet" holds however slow
    the machine is: tests move a retry's time to now (``make_due``) instead of waiting."""
    runtime = Runtime.from_settings(settings.model_copy(update={"WEBHOOK_BACKOFF_SECONDS": 60}))
    yield runtime
    runtime.database.dispose()


def make_due(runtime: Runtime, endpoint_id: int) -> None:
    """The retries of an endpoint's open deliveries fall due now (time passes)."""
    with runtime.database.unit_of_work() as s:
        s.execute(
            update(WebhookDelivery)
            .where(
                WebhookDelivery.endpoint_id == endpoint_id,
                WebhookDelivery.status == DeliveryStatus.PENDING,
            )
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )
