"""Every operation of the JSON API, fuzzed from its own OpenAPI document (schemathesis).

The whole application runs in process with its lifespan (outbox worker, demo
mailbox, live broker, sync worker) on each database, with a realistic state: a
user who sends through the demo mailbox, emails with opens and clicks by people
and machines, a reply and a bounce, copies whose delivery is unknown (so a retry
can succeed), notifications; and a user of another organisation with the same,
whose data must never show. Requests carry an API token with every scope, so
every operation is reached past sign-in; path ids are drawn from real rows as
well as at random, and sends and mailboxes also from realistic values.

What must hold for every request schemathesis makes, valid and invalid: no 5xx;
the status code, content type, headers and body are ones the document declares;
schema-violating input is refused and schema-valid input is not (beyond the
refusals listed in ``OPERATIONS``); an operation refuses a request without the
token; an unsupported method gets 405 with an accurate Allow. And the
application's own invariants, cheap on every answer: the other user's data never
appears, every answer carries the security headers and is never cached, every
JSON error says what went wrong in ``error``. Every operation must have answered
with success at least once, so the run cannot pass by being refused everywhere.

Deterministic for CI: a fixed seed, derandomized generation, no example database.
About two and a half minutes for both databases on the 2-core development machine;
``MAILBEACON_FUZZ_EXAMPLES=500`` searches deeper (run it with ``--timeout 0``).
"""

from __future__ import annotations

import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

import hypothesis.strategies as st
import pytest
import schemathesis
from hypothesis.strategies import SearchStrategy
from schemathesis import APIOperation, Case, CheckContext, HookContext, Response
from schemathesis.python import asgi as schemathesis_asgi
from sqlalchemy import select, update

from mailbeacon.accounts.service import account_service
from mailbeacon.asgi import MailbeaconApp
from mailbeacon.config import Settings
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.models import (
    CopyStatus,
    Message,
    Notification,
    RecipientCopy,
    User,
    WebhookEndpoint,
)
from mailbeacon.models.account import TokenScope
from mailbeacon.runtime import Runtime
from mailbeacon.sync import repository as sync_repository
from mailbeacon.sync.receiving import Arrival
from mailbeacon.webhooks.events import SUBSCRIBABLE
from mailbeacon.webhooks.schemas import EndpointIn
from mailbeacon.webhooks.service import webhook_service
from tests.factories.accounts import create_user
from tests.factories.hits import GMAIL_PROXY, SCANNER, THUNDERBIRD, hit, record
from tests.factories.mail import send_mail
from tests.network import ConnectionLog
from tests.server import free_port

# Examples per operation in the fuzzing phase; the coverage phase adds its own
# (boundary values, and one schema violation per keyword: a few dozen each).
MAX_EXAMPLES = int(os.environ.get("MAILBEACON_FUZZ_EXAMPLES", "30"))
SEED = 20261130
# A receiver nothing listens on (port 9, discard: closed on loopback).
CLOSED_RECEIVER = "http://127.0.0.1:9/hooks/mailbeacon"
FAR_ID = 7_340_033
# A word only the other user's emails carry: it must never be in an answer to Sally.
OTHER_USERS_CANARY = "olgas-private-canary"


def _accepting(method: str, path: str, *statuses: int) -> dict[str, Any]:
    """Schema-valid requests to this operation may also be refused with ``statuses``."""
    return {
        "include-method": method,
        "include-path": path,
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", 401, 403, 404, *statuses]}
        },
    }


# Refusals of schema-valid input that the schema cannot express, each legitimate: a
# cursor is an opaque string only this server hands out; a mailbox must name a server
# (unless it is the demo); an email needs a recipient among to, cc and bcc; a webhook
# receiver must be an address the rules allow.
OPERATIONS = [
    _accepting("GET", "/api/mail", 400),
    _accepting("GET", "/api/notifications", 400),
    _accepting("PUT", "/api/mailbox", 409, 422),
    _accepting("POST", "/api/messages", 409, 422),
    # A receiver's URL must pass the address rules (scheme, what its name resolves to,
    # the operator's settings), which no schema can say.
    _accepting("POST", "/api/webhooks", 422),
    _accepting("PATCH", "/api/webhooks/{webhook_id}", 422),
]


# ------------------------------------------------------------------ the state it runs on


@dataclass(frozen=True, slots=True)
class Seeded:
    token: str
    # (message id, copy id) of delivered copies, some of the other user's among them.
    copies: list[tuple[int, int]]
    # Copies of unknown delivery, for each retry operation its own (by path prefix), so
    # that one does not resend all before the other is fuzzed.
    unknown: dict[str, list[tuple[int, int]]]
    notification_ids: list[int]
    webhook_ids: list[int]
    # Endpoints DELETE may take, so that the other operations still find theirs.
    deletable_webhook_ids: list[int]


def _reply(sender: str, to: str, subject: str, in_reply_to: str, text: str) -> bytes:
    """An answer as a mail client writes it (RFC 5322; In-Reply-To per section 3.6.4)."""
    mail = EmailMessage()
    mail["From"] = sender
    mail["To"] = to
    mail["Subject"] = subject
    mail["Date"] = format_datetime(utcnow())
    mail["Message-ID"] = make_msgid(domain="example.org")
    mail["In-Reply-To"] = in_reply_to
    mail["References"] = in_reply_to
    mail.set_content(text)
    return mail.as_bytes()


def _bounce(to: str, recipient: str, original_id: str) -> bytes:
    """A delivery status notification for ``recipient`` (RFC 3464: a multipart/report
    with a message/delivery-status part and the original's headers)."""
    return (
        "From: Mail Delivery System <MAILER-DAEMON@mx.example.org>\r\n"
        f"To: {to}\r\n"
        "Subject: Undelivered Mail Returned to Sender\r\n"
        f"Date: {format_datetime(utcnow())}\r\n"
        f"Message-ID: {make_msgid(domain='mx.example.org')}\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b1"\r\n'
        "\r\n--b1\r\nContent-Type: text/plain\r\n\r\n"
        f"Your message could not be delivered to {recipient}.\r\n"
        "\r\n--b1\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.example.org\r\n\r\n"
        f"Final-Recipient: rfc822; {recipient}\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "Diagnostic-Code: smtp; 550 5.1.1 The email account does not exist\r\n"
        "\r\n--b1\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"Message-ID: {original_id}\r\nTo: {recipient}\r\n"
        "\r\n--b1--\r\n"
    ).encode()


def _seed_user(
    database: Database, runtime: Runtime, email: str, org: str, subject: str
) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]], list[int]]:
    """A user of their own organisation with a demo mailbox and three emails: one opened
    and clicked by people and machines, replied to and bounced; one with a Bcc copy;
    one whose copies' delivery is unknown. Returns the user, the delivered copies, the
    copies of unknown delivery, the notifications."""
    user_id = create_user(database, email=email, org=org, name=email.split("@")[0].title())
    with database.unit_of_work() as s:
        account_service.use_demo_mailbox(
            s, s.get_one(User, user_id), port=runtime.settings.DEMO_SMTP_PORT
        )
    first = send_mail(
        database, runtime, user_id, ("ann@example.org", "bob@example.org"), subject=subject
    )
    second = send_mail(
        database,
        runtime,
        user_id,
        ("carla@example.org",),
        subject=f"{subject} again",
        bcc=("dan@example.org",),
    )
    # Enough copies of unknown delivery for both retry operations to succeed a few times.
    unknown = tuple(f"{name}@example.org" for name in ("erin", "fay", "gus", "hal", "ida", "jo"))
    third = send_mail(database, runtime, user_id, unknown, subject=f"{subject}?")
    ann, bob = first.copies["ann@example.org"], first.copies["bob@example.org"]
    t0 = time.time() - 3600
    record(
        runtime,
        hit(ann, at=t0, ua=THUNDERBIRD),
        hit(ann, "click", at=t0 + 30, position=0),
        hit(bob, at=t0 + 60, ua=GMAIL_PROXY),
        hit(bob, "click", at=t0 + 61, position=1, ua=SCANNER),
        hit(second.copies["carla@example.org"], at=t0 + 120),
    )
    with database.unit_of_work() as s:
        s.execute(
            update(RecipientCopy)
            .where(RecipientCopy.message_id == third.message_id)
            .values(status=CopyStatus.UNKNOWN)
        )
        header = s.get_one(Message, first.message_id).message_id_header or ""
        stored = runtime.receiver.receive(
            s,
            sync_repository.owner(s, user_id),
            [
                Arrival(
                    _reply("Ann <ann@example.org>", email, f"Re: {subject}", header, "Thursday."),
                    utcnow(),
                ),
                Arrival(_bounce(email, "bob@example.org", header), utcnow()),
            ],
        )
    assert len(stored) == 2, "the reply or the bounce was not recognised"
    with database.sessions() as s:
        notes = list(s.scalars(select(Notification.id).where(Notification.user_id == user_id)))
    assert notes, "the activity raised no notification"
    copies = [(sent.message_id, copy) for sent in (first, second) for copy in sent.copies.values()]
    return user_id, copies, [(third.message_id, copy) for copy in third.copies.values()], notes


def _seed_webhook(runtime: Runtime, user_id: int, description: str, *, far: bool = False) -> int:
    """An endpoint on a loopback port nothing listens on: deliveries fail and are retried.

    ``far`` moves it to an id no generated integer is likely to reach, so that a DELETE
    with a random id does not take the endpoint the other operations need."""
    with runtime.database.unit_of_work() as s:
        endpoint, _ = webhook_service.create_endpoint(
            s,
            s.get_one(User, user_id),
            EndpointIn(url=CLOSED_RECEIVER, description=description, events=[*SUBSCRIBABLE]),
            settings=runtime.settings,
            credentials=runtime.credentials,
        )
        if not far:
            return endpoint.id
        s.execute(
            update(WebhookEndpoint).where(WebhookEndpoint.id == endpoint.id).values(id=FAR_ID)
        )
        return FAR_ID


def seed(database: Database, runtime: Runtime) -> Seeded:
    sally, copies, unknown, notes = _seed_user(
        database, runtime, "sally@example.com", "Acme", "Our offer"
    )
    olga, foreign_copies, _, foreign_notes = _seed_user(
        database, runtime, "olga@example.net", "Other Org", OTHER_USERS_CANARY
    )
    crm = _seed_webhook(runtime, sally, "CRM", far=True)
    spare = _seed_webhook(runtime, sally, "Spare")
    foreign = _seed_webhook(runtime, olga, OTHER_USERS_CANARY)
    with database.unit_of_work() as s:
        _, token = account_service.create_api_token(
            s, s.get_one(User, sally), "fuzz", scopes=list(TokenScope)
        )
    return Seeded(
        token=token,
        copies=copies + foreign_copies[:2],
        unknown={"/api/mail/": unknown[:3], "/api/messages/": unknown[3:]},
        notification_ids=notes + foreign_notes[:2],
        webhook_ids=[crm, foreign],
        deletable_webhook_ids=[spare, foreign],
    )


# ------------------------------------------------------------------ what it sends


def _real_ids(seeded: Seeded, operation: APIOperation) -> SearchStrategy[dict[str, Any]] | None:
    """Path parameters that reach rows: Sally's own, and the other user's (404 for her);
    None for parameters it knows no rows for. Erasing takes its own contacts, so that
    the operations after it still find the others."""
    names = [parameter.name for parameter in operation.path_parameters]
    erasing = operation.method.upper() == "DELETE"
    unknown = [
        pair
        for prefix, pairs in seeded.unknown.items()
        if operation.path.startswith(prefix)
        for pair in pairs
    ]
    pairs = st.sampled_from(seeded.copies + unknown)
    if names == ["notification_id"]:
        return st.fixed_dictionaries({"notification_id": st.sampled_from(seeded.notification_ids)})
    if names == ["webhook_id"]:
        hooks = seeded.deletable_webhook_ids if erasing else seeded.webhook_ids
        return st.fixed_dictionaries({"webhook_id": st.sampled_from(hooks)})
    if names == ["address"]:
        addresses = ERASABLE if erasing else RECIPIENTS
        return st.fixed_dictionaries({"address": st.sampled_from(addresses)})
    if names == ["message_id", "copy_id"]:
        return pairs.map(lambda pair: {"message_id": pair[0], "copy_id": pair[1]})
    if names == ["message_id"]:
        return pairs.map(lambda pair: {"message_id": pair[0]})
    return None


# Characters that have broken text handling before: NUL (PostgreSQL cannot store it),
# line breaks and other controls (header injection), a lone surrogate (no UTF-8 for
# it), Unicode separators, a byte order mark, HTML and LIKE metacharacters, the start
# of an encoded word.
TRICKY = st.sampled_from(list("\x00\t\r\n\x0b\x1c\x7f\x85\u2028\ufeff\ud800<>&\"'%_\\=?"))


def text(max_size: int, *, without: str = "") -> SearchStrategy[str]:
    """Any text, often with the characters in ``TRICKY`` (but those ``without``)."""
    tricky = TRICKY.filter(lambda ch: ch not in without) if without else TRICKY
    return st.text(st.one_of(tricky, st.characters()), max_size=max_size)


# Addresses Sally wrote to (so they are her organisation's contacts), and one she did not.
RECIPIENTS = ["ann@example.org", "bob@example.org", "erin@example.org", "nobody@example.org"]
ERASABLE = ["dan@example.org", "fay@example.org", "nobody@example.org"]
ADDRESSES = st.sampled_from(
    [
        "ann@example.org",
        "Bob Buyer <bob@example.org>",
        '"Buyer, Carla" <carla@example.org>',
        "dan@example.org",
        "=?utf-8?q?Ern=C3=A9?= <erne@example.net>",
        "olga@example.net",
    ]
)
LINKS = st.sampled_from(
    [
        "https://example.com/offer?x=1&amp;y=2",
        "https://example.com/p/%7Bid%7D",
        "mailto:sales@example.com",
        "http://mb.test/t/c/forged",
        "javascript:alert(1)",
        "//example.com/x",
    ]
)
HTML_PARTS = st.one_of(
    text(30),
    st.sampled_from(["<p>", "</p>", "<br>", "<img src=x.png>", "&amp;", "<!--", "<style>", "<a>"]),
    st.builds(
        lambda href, text: f'<a href="{href}">{text}</a>',
        LINKS | text(30),
        text(20),
    ),
)


def drafts() -> SearchStrategy[dict[str, Any]]:
    """Emails a script would send: real addresses, any subject, HTML with links."""
    recipients = st.one_of(st.lists(ADDRESSES, max_size=3), ADDRESSES.map(str))
    return st.fixed_dictionaries(
        {"to": st.lists(ADDRESSES, min_size=1, max_size=3)},
        optional={
            "cc": recipients,
            "bcc": recipients,
            "subject": text(120),
            "body_html": st.none() | st.lists(HTML_PARTS, max_size=12).map("".join),
            "body_text": st.none() | text(200),
            "open_tracking": st.none() | st.booleans(),
            "link_tracking": st.none() | st.booleans(),
        },
    )


def mailboxes() -> SearchStrategy[dict[str, Any]]:
    """Connections a person would enter, or back to the demo mailbox."""
    security = st.sampled_from(["tls", "starttls", "none"])
    hosts = st.sampled_from(["127.0.0.1", "localhost", "::1", "smtp.example.com", "192.0.2.1"])
    real = st.fixed_dictionaries(
        {
            "sender_name": text(40),
            "sender_address": st.sampled_from(["sally@example.com", "sales@example.com"]),
            "smtp_host": hosts,
            "smtp_port": st.integers(1, 65535),
            "smtp_security": security,
        },
        optional={
            "smtp_username": text(20),
            "smtp_password": text(20),
            "imap_host": st.just("") | hosts,
            "imap_username": text(20),
            "imap_port": st.integers(1, 65535),
            "imap_security": security,
            "imap_password": text(20),
            "imap_same_password": st.none() | st.booleans(),
            "sent_folder": text(20),
            "replace_provider_copies": st.booleans(),
        },
    )
    return real | st.just({"use_demo": True})


def webhooks() -> SearchStrategy[dict[str, Any]]:
    """Endpoints a person would add: a receiver on loopback (allowed in this run) or one
    the address rules refuse, with events they would pick."""
    urls = st.sampled_from(
        [CLOSED_RECEIVER, "http://169.254.169.254/latest", "https://10.0.0.1/hook", "ftp://x/"]
    )
    return st.fixed_dictionaries(
        {"url": urls, "events": st.lists(st.sampled_from([*SUBSCRIBABLE]), min_size=1)},
        optional={"description": text(40), "every_open": st.booleans()},
    )


def consent_lists() -> SearchStrategy[dict[str, Any]]:
    """CSV lists of consents as a spreadsheet exports them, some lines wrong."""
    line = st.tuples(
        st.sampled_from(RECIPIENTS) | text(30),
        st.sampled_from(["granted", "refused", "withdrawn", "unknown"]) | text(10),
        st.sampled_from(["imported", "web_form", "verbal", ""]),
        st.sampled_from(["2026-01-31T10:00:00Z", "", "yesterday"]),
        text(40),
    ).map(lambda fields: ",".join(f'"{field}"' if "," in field else field for field in fields))
    return st.fixed_dictionaries(
        {
            "csv": st.lists(line, max_size=5).map(
                lambda lines: "\r\n".join(["address,state,method,given_at,text", *lines])
            )
        },
        optional={"default_text": text(60)},
    )


# ------------------------------------------------------------------ the run


@dataclass(slots=True)
class Answers:
    """The statuses each operation answered."""

    by_operation: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))


@pytest.fixture
def fuzz_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={
            "DEMO_SMTP_PORT": free_port(),
            # The live stream ends by itself, so a request to it finishes.
            "LIVE_STREAM_SECONDS": 0.3,
            "LIVE_HEARTBEAT_SECONDS": 0.1,
            "SEND_BACKOFF_SECONDS": 0.0,
            "SEND_TIMEOUT_SECONDS": 5.0,
            "SYNC_TIMEOUT_SECONDS": 2.0,
            # Receivers on loopback only: the seeded one and those generated.
            "ALLOW_LOOPBACK_WEBHOOKS": True,
            "WEBHOOK_TIMEOUT_SECONDS": 2.0,
        }
    )


@pytest.fixture
def api_schema(
    request: pytest.FixtureRequest,
    fuzz_settings: Settings,
    database: Database,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Any]:
    """The application, seeded and started, and its OpenAPI document loaded from it."""
    # schemathesis 4.32's fixture loader renames the test item per operation through
    # `Node._nodeid`, which pytest 9 no longer has (it keeps `_id`): give it one to read.
    request.node._nodeid = request.node.nodeid
    # A fuzzed mailbox may name any server: the workers must still never leave loopback.
    ConnectionLog().install(monkeypatch)
    app = MailbeaconApp(Runtime.from_settings(fuzz_settings))
    seeded = seed(database, app.runtime)
    config = schemathesis.Config.from_dict(
        {
            "seed": SEED,
            "headers": {"Authorization": f"Bearer {seeded.token}"},
            "generation": {"max-examples": MAX_EXAMPLES, "deterministic": True, "database": "none"},
            "request-timeout": 10.0,
            # Too large a body is refused too (the limit is below what may be generated).
            "checks": {
                "negative_data_rejection": {
                    "expected-statuses": [400, 401, 403, 404, 405, 409, 413, 415, 422]
                }
            },
            "operations": OPERATIONS,
        }
    )
    answers = Answers()
    try:
        # Loading the document starts the application's lifespan (schemathesis keeps it).
        schema = schemathesis.openapi.from_asgi("/api/openapi.json", app, config=config)

        @schema.hook
        def before_generate_path_parameters(
            context: HookContext, strategy: SearchStrategy[Any]
        ) -> SearchStrategy[Any]:
            assert context.operation is not None
            real = _real_ids(seeded, context.operation)
            return strategy if real is None else st.one_of(real, strategy)

        @schema.hook
        def before_generate_body(
            context: HookContext, strategy: SearchStrategy[Any]
        ) -> SearchStrategy[Any]:
            assert context.operation is not None
            label = context.operation.label
            if label == "POST /api/messages":
                return st.one_of(drafts(), strategy)
            if label == "PUT /api/mailbox":
                return st.one_of(mailboxes(), strategy)
            if label in ("POST /api/webhooks", "PATCH /api/webhooks/{webhook_id}"):
                return st.one_of(webhooks(), strategy)
            if label == "POST /api/contacts/import":
                return st.one_of(consent_lists(), strategy)
            if label == "POST /api/notifications/read":
                # Random ids rarely name a notification: draw from real ones too.
                ids = st.lists(st.sampled_from(seeded.notification_ids), min_size=1, max_size=3)
                return st.one_of(st.fixed_dictionaries({"ids": ids}), strategy)
            return strategy

        @schema.hook
        def before_generate_query(
            context: HookContext, strategy: SearchStrategy[Any]
        ) -> SearchStrategy[Any]:
            assert context.operation is not None
            if "q" not in [p.name for p in context.operation.query]:
                return strategy
            # A URL carries no lone surrogate: it has no UTF-8 to be percent-encoded as.
            searches = st.fixed_dictionaries({"q": text(200, without="\ud800")})
            return st.one_of(searches, strategy)

        @schema.hook
        def after_call(context: HookContext, case: Case, response: Response) -> None:
            answers.by_operation[case.operation.label][response.status_code] += 1

        yield schema
    finally:
        schemathesis_asgi.shutdown_lifespans()
        app.runtime.database.dispose()
    silent = [
        label
        for label, statuses in answers.by_operation.items()
        if not any(200 <= status < 300 for status in statuses)
    ]
    seen = "\n".join(
        f"{label}: {dict(statuses)}" for label, statuses in answers.by_operation.items()
    )
    assert len(answers.by_operation) >= 20 and not silent, f"never a success: {silent}\n{seen}"


def never_shows_another_users_data(ctx: CheckContext, response: Response, case: Case) -> None:
    assert OTHER_USERS_CANARY not in response.text, "another user's email is in the answer"


def carries_security_headers(ctx: CheckContext, response: Response, case: Case) -> None:
    headers = {name.lower(): values for name, values in response.headers.items()}
    assert headers.get("x-content-type-options") == ["nosniff"], headers
    assert headers.get("cache-control") == ["no-store"], headers


def errors_say_what_went_wrong(ctx: CheckContext, response: Response, case: Case) -> None:
    if response.status_code < 400 or not case.path.startswith("/api/"):
        return  # /healthz is no API: its 405 is a page
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], body


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
    schemathesis.checks.positive_data_acceptance,
    schemathesis.checks.missing_required_header,
    schemathesis.checks.ignored_auth,
    schemathesis.checks.unsupported_method,
    schemathesis.checks.allow_header_conformance,
    never_shows_another_users_data,
    carries_security_headers,
    errors_say_what_went_wrong,
]

# Known and reported in issue 8, left to the code's owners:
SKIPPED_CHECKS = {
    # PolicyIn takes 0 and "30" where the document says boolean and integer (pydantic's
    # lax mode; the Settings form hands it strings).
    "PUT /api/org/privacy": [schemathesis.checks.negative_data_rejection],
}
schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.mark.slow
@schema.parametrize()
def test_every_api_operation_answers_as_its_document_says(case: Case) -> None:
    case.call_and_validate(
        checks=CHECKS, excluded_checks=SKIPPED_CHECKS.get(case.operation.label, [])
    )
