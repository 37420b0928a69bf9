"""SMTP against real aiosmtpd servers on loopback: outcomes and the connection test."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbeacon.kit.netpolicy import AddressPolicy
from mailbeacon.mail.mailer import Outcome, SmtpMailer, SmtpSettings, test_smtp_connection
from mailbeacon.models import Security
from tests.mail.conftest import SinkHandler, SmtpPeer, refuse_every_password, start_smtp, stop_smtp
from tests.network import SSH_BANNER, ConnectionLog, HostTable, closed_port, fake_service
from tests.sync.dovecot import _make_certificate

pytestmark = pytest.mark.asyncio

MESSAGE = b"From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n\r\nhello\r\n"
# The servers these tests talk to listen on loopback, which the default policy refuses.
LOOPBACK = AddressPolicy(allow_loopback=True)


def mailer_for(peer: SmtpPeer) -> SmtpMailer:
    return SmtpMailer(SmtpSettings(peer.host, peer.port, Security.NONE, timeout=5, policy=LOOPBACK))


async def test_connection_test_reports_each_stage(sink: SmtpPeer) -> None:
    refused = await test_smtp_connection(
        "127.0.0.1", closed_port(), Security.NONE, "", "", policy=LOOPBACK, timeout=3
    )
    assert (refused.ok, refused.stage) == (False, "connect")
    assert "nothing answered, or the connection was refused" in refused.message

    # A plain server on a TLS setting: the handshake fails, not the connection.
    tls = await test_smtp_connection(
        sink.host, sink.port, Security.TLS, "", "", policy=LOOPBACK, timeout=3
    )
    assert (tls.ok, tls.stage) == (False, "tls")
    assert "the TLS handshake did not complete" in tls.message

    starttls = await test_smtp_connection(
        sink.host, sink.port, Security.STARTTLS, "", "", policy=LOOPBACK, timeout=3
    )
    assert (starttls.ok, starttls.stage) == (False, "tls")
    assert "does not offer STARTTLS" in starttls.message

    ok = await test_smtp_connection(
        sink.host, sink.port, Security.NONE, "", "", policy=LOOPBACK, timeout=3
    )
    assert (ok.ok, ok.stage) == (True, "ok")
    assert ok.message == (
        f"Connected to {sink.host}:{sink.port} without encryption (this machine only)."
    )


async def test_connection_test_reports_a_refused_password() -> None:
    peer = await start_smtp(object(), auth_require_tls=False, authenticator=refuse_every_password)
    try:
        result = await test_smtp_connection(
            peer.host, peer.port, Security.NONE, "sally", "wrong", policy=LOOPBACK, timeout=3
        )
    finally:
        await stop_smtp(peer)
    assert (result.ok, result.stage) == (False, "auth")
    assert result.message == (
        f"{peer.host}:{peer.port} refused the user name or password (reply 535)."
    )


async def test_a_loopback_server_is_refused_by_default_before_connecting(
    sink: SmtpPeer, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = ConnectionLog()
    connections.install(monkeypatch)
    for host in (sink.host, "localhost", "[::1]"):
        result = await test_smtp_connection(
            host, sink.port, Security.NONE, "", "", policy=AddressPolicy(), timeout=3
        )
        assert (result.ok, result.stage) == (False, "connect")
        assert "(loopback); the operator has not allowed mail servers on this machine" in (
            result.message
        )
    mailer = SmtpMailer(SmtpSettings(sink.host, sink.port, Security.NONE, timeout=3))
    delivery = await mailer.send("a@example.com", "b@example.org", MESSAGE)
    assert delivery.outcome == Outcome.PERMANENT
    assert "(loopback)" in delivery.reply
    assert connections.attempts == []
    assert sink.handler.accepted == []


async def test_no_encryption_is_refused_for_remote_hosts_before_connecting(
    hosts: HostTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    connections = ConnectionLog()
    connections.install(monkeypatch)
    # Public addresses (nothing is sent there); "localhost" made to point at one is
    # judged by where it points.
    hosts.add("smtp.example.com", "93.184.215.14")
    hosts.add("localhost", "93.184.215.14")
    for host in ("93.184.215.14", "smtp.example.com", "localhost"):
        result = await test_smtp_connection(
            host, 25, Security.NONE, "", "", policy=LOOPBACK, timeout=5
        )
        assert (result.ok, result.stage) == (False, "tls")
        assert "only allowed to this machine" in result.message
    mailer = SmtpMailer(SmtpSettings("smtp.example.com", 25, Security.NONE))
    delivery = await mailer.send("a@example.com", "b@example.org", MESSAGE)
    assert delivery.outcome == Outcome.PERMANENT
    assert "only allowed to this machine" in delivery.reply
    assert connections.attempts == []


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
    mailer = SmtpMailer(
        SmtpSettings("127.0.0.1", closed_port(), Security.NONE, timeout=3, policy=LOOPBACK)
    )
    delivery = await mailer.send("a@example.com", "ann@example.org", MESSAGE)
    assert delivery.outcome == Outcome.TEMPORARY
    assert "nothing answered, or the connection was refused" in delivery.reply


@pytest.mark.parametrize("security", [Security.NONE, Security.STARTTLS, Security.TLS])
async def test_a_service_that_is_not_smtp_reads_like_a_silent_one(security: Security) -> None:
    """An SSH daemon and a port that never answers get the same fixed sentence."""
    answers = []
    for banner in (SSH_BANNER, None):
        with fake_service(banner) as port:
            result = await test_smtp_connection(
                "127.0.0.1", port, security, "", "", policy=LOOPBACK, timeout=1
            )
        assert not result.ok
        assert "SSH" not in result.message and "OpenSSH" not in result.message
        answers.append((result.stage, result.message.replace(f":{port}", ":PORT")))
    assert answers[0] == answers[1]
    stage, message = answers[0]
    if security == Security.TLS:
        assert (stage, message) == (
            "tls",
            "127.0.0.1:PORT: the TLS handshake did not complete; this port may expect "
            "STARTTLS or no encryption.",
        )
    else:
        assert (stage, message) == (
            "connect",
            "127.0.0.1:PORT did not answer as a mail server; if the port expects implicit "
            "TLS (usually 465), choose TLS.",
        )


@pytest_asyncio.fixture
async def tls_sink(tmp_path: Path) -> AsyncIterator[tuple[SmtpPeer, ssl.SSLContext]]:
    """aiosmtpd with implicit TLS on 127.0.0.1, its certificate for "localhost" and
    127.0.0.1 only; yields it with a client context that trusts that certificate."""
    cert = _make_certificate(tmp_path / "tls")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, cert.parent / "key.pem")
    loop = asyncio.get_running_loop()
    handler = SinkHandler()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="sink.test", loop=loop),
        "127.0.0.1",
        0,
        ssl=server_context,
    )
    peer = SmtpPeer("127.0.0.1", server.sockets[0].getsockname()[1], handler, server)
    yield peer, ssl.create_default_context(cafile=cert)
    await stop_smtp(peer)


async def test_the_certificate_is_checked_for_the_name_while_the_vetted_address_is_used(
    tls_sink: tuple[SmtpPeer, ssl.SSLContext], hosts: HostTable, monkeypatch: pytest.MonkeyPatch
) -> None:
    peer, trusted = tls_sink
    connections = ConnectionLog()
    connections.install(monkeypatch)
    # The certificate is valid for 127.0.0.1, where the connection goes, but not for
    # the name the user gave: checked against the address, it would pass.
    hosts.add("smtp.mail.test", "127.0.0.1")

    def mailer(host: str) -> SmtpMailer:
        return SmtpMailer(
            SmtpSettings(
                host, peer.port, Security.TLS, timeout=5, policy=LOOPBACK, tls_context=trusted
            )
        )

    wrong_name = await mailer("smtp.mail.test").send("a@example.com", "b@example.org", MESSAGE)
    assert wrong_name.outcome == Outcome.PERMANENT
    assert wrong_name.reply == (
        f"smtp.mail.test:{peer.port}: the server's certificate is for another host name."
    )
    right = mailer("localhost")
    try:
        delivered = await right.send("a@example.com", "b@example.org", MESSAGE)
    finally:
        await right.close()
    assert delivered.outcome == Outcome.SENT
    # Each name was looked up once, and only the vetted address was connected to.
    assert hosts.asked == ["smtp.mail.test", "localhost"]
    assert connections.attempts == ["127.0.0.1", "127.0.0.1"]


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
