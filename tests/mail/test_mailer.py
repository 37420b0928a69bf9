"""SMTP against real aiosmtpd servers on loopback: outcomes and the connection test."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbeacon.mail.mailer import Outcome, SmtpMailer, SmtpSettings, test_smtp_connection
from mailbeacon.models import Security
from tests.mail.conftest import SmtpPeer, refuse_every_password, start_smtp, stop_smtp

pytestmark = pytest.mark.asyncio

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nhello\r\n"


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mailer_for(peer: SmtpPeer) -> SmtpMailer:
    return SmtpMailer(SmtpSettings(peer.host, peer.port, Security.NONE, timeout=5))


async def test_connection_test_reports_each_stage(sink: SmtpPeer) -> None:
    refused = await test_smtp_connection(
        "127.0.0.1", closed_port(), Security.NONE, "", "", timeout=3
    )
    assert (refused.ok, refused.stage) == (False, "connect")
    assert "connection refused" in refused.message

    # A plain server on a TLS setting: the handshake fails, not the connection.
    tls = await test_smtp_connection(sink.host, sink.port, Security.TLS, "", "", timeout=3)
    assert (tls.ok, tls.stage) == (False, "tls")
    assert "did not answer with TLS" in tls.message

    starttls = await test_smtp_connection(
        sink.host, sink.port, Security.STARTTLS, "", "", timeout=3
    )
    assert (starttls.ok, starttls.stage) == (False, "tls")
    assert "does not offer STARTTLS" in starttls.message

    ok = await test_smtp_connection(sink.host, sink.port, Security.NONE, "", "", timeout=3)
    assert (ok.ok, ok.stage) == (True, "ok")


async def test_connection_test_reports_a_refused_password() -> None:
    peer = await start_smtp(object(), auth_require_tls=False, authenticator=refuse_every_password)
    try:
        result = await test_smtp_connection(
            peer.host, peer.port, Security.NONE, "sally", "wrong", timeout=3
        )
    finally:
        await stop_smtp(peer)
    assert (result.ok, result.stage) == (False, "auth")
    assert "refused the user name or password" in result.message
    assert "535" in result.message


async def test_no_encryption_is_refused_for_remote_hosts() -> None:
    # Refused before any connection is tried (192.0.2.1 is a documentation address).
    result = await test_smtp_connection("192.0.2.1", 25, Security.NONE, "", "", timeout=5)
    assert (result.ok, result.stage) == (False, "tls")
    assert "only allowed to this machine" in result.message
    mailer = SmtpMailer(SmtpSettings("smtp.example.com", 25, Security.NONE))
    delivery = await mailer.send("a@example.com", "b@example.org", MESSAGE)
    assert delivery.outcome == Outcome.PERMANENT
    assert "only allowed to this machine" in delivery.reply


async def test_refused_recipient_fails_and_the_session_carries_on(sink: SmtpPeer) -> None:
    sink.handler.refuse_rcpt["bob@example.org"] = "550 5.1.1 No such user"
    mailer = mailer_for(sink)
    try:
        bob = await mailer.send("a@example.com", "bob@example.org", MESSAGE)
        ann = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
    finally:
        await mailer.close()
    assert (bob.outcome, bob.reply) == (Outcome.PERMANENT, "550 5.1.1 No such user")
    assert ann.outcome == Outcome.SENT and ann.reply.startswith("250")
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["ann@example.org"]]


async def test_a_4xx_answer_is_temporary(sink: SmtpPeer) -> None:
    sink.handler.data_replies.append("451 4.3.0 Try again later")
    mailer = mailer_for(sink)
    try:
        first = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
        second = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
    finally:
        await mailer.close()
    assert (first.outcome, first.reply) == (Outcome.TEMPORARY, "451 4.3.0 Try again later")
    assert second.outcome == Outcome.SENT
    assert len(sink.handler.accepted) == 1


async def test_nothing_listening_is_temporary() -> None:
    mailer = SmtpMailer(SmtpSettings("127.0.0.1", closed_port(), Security.NONE, timeout=3))
    delivery = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
    assert delivery.outcome == Outcome.TEMPORARY
    assert "connection refused" in delivery.reply


class _HangUpAfterData:
    """Takes the message, then drops the connection without answering."""

    def __init__(self) -> None:
        self.received = 0

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received += 1
        assert server.transport is not None
        server.transport.abort()
        await asyncio.sleep(0)
        return "250 never heard"


async def test_connection_lost_after_data_is_unknown_not_retried() -> None:
    handler = _HangUpAfterData()
    peer = await start_smtp(handler)
    mailer = mailer_for(peer)
    try:
        delivery = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
    finally:
        await mailer.close()
        await stop_smtp(peer)
    assert delivery.outcome == Outcome.UNKNOWN
    assert handler.received == 1


class _RememberSessions:
    def __init__(self) -> None:
        self.sessions: list[SMTP] = []
        self.accepted: list[list[str]] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.sessions.append(server)
        self.accepted.append(list(envelope.rcpt_tos))
        return "250 OK"


async def test_a_kept_connection_the_server_dropped_is_reopened() -> None:
    handler = _RememberSessions()
    peer = await start_smtp(handler)
    mailer = mailer_for(peer)
    try:
        assert (await mailer.send("a@example.com", "ann@example.org", MESSAGE)).outcome == "sent"
        # The server closes the idle session (as servers do after a while).
        transport = handler.sessions[0].transport
        assert transport is not None
        transport.close()
        await asyncio.sleep(0.05)
        assert (await mailer.send("a@example.com", "bob@example.org", MESSAGE)).outcome == "sent"
    finally:
        await mailer.close()
        await stop_smtp(peer)
    assert handler.accepted == [["ann@example.org"], ["bob@example.org"]]
    assert handler.sessions[0] is not handler.sessions[1]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "[::1]"])
async def test_loopback_hosts(host: str) -> None:
    from mailbeacon.mail.mailer import is_loopback_host

    assert is_loopback_host(host)
    assert not is_loopback_host("127.example.com")
