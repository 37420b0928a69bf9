"""Real SMTP peers on loopback (aiosmtpd on the test's own event loop) and a runtime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import pytest_asyncio
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from mailbeacon.config import Settings
from mailbeacon.runtime import Runtime


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes


@dataclass
class SinkHandler:
    """Records every accepted message; can refuse, delay or stall on demand."""

    accepted: list[Received] = field(default_factory=list)
    data_calls: int = 0
    # RCPT replies by address (e.g. "550 5.1.1 No such user").
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    # Replies given to the next DATA commands, in order, before accepting again.
    data_replies: list[str] = field(default_factory=list)
    # When set, DATA is received but not answered until `release` is set.
    stall: bool = False
    stalled: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.data_calls += 1
        content = envelope.original_content or b""
        if self.stall:
            # The message has arrived; keep the client waiting for the answer.
            self.accepted.append(
                Received(envelope.mail_from or "", list(envelope.rcpt_tos), content)
            )
            self.stalled.set()
            await self.release.wait()
            return "250 2.0.0 OK (late)"
        if self.data_replies:
            return self.data_replies.pop(0)
        self.accepted.append(Received(envelope.mail_from or "", list(envelope.rcpt_tos), content))
        return "250 2.0.0 OK queued"

    def received_by(self) -> dict[str, list[Received]]:
        out: dict[str, list[Received]] = {}
        for r in self.accepted:
            for rcpt in r.rcpt_tos:
                out.setdefault(rcpt, []).append(r)
        return out


@dataclass
class SmtpPeer:
    host: str
    port: int
    handler: Any
    server: asyncio.Server


async def start_smtp(handler: Any, **smtp_kwargs: Any) -> SmtpPeer:
    """aiosmtpd on 127.0.0.1, a free port chosen by the kernel, on the running loop."""
    loop = asyncio.get_running_loop()
    smtp_kwargs.setdefault("hostname", "sink.test")
    server = await loop.create_server(
        lambda: SMTP(handler, loop=loop, **smtp_kwargs), "127.0.0.1", 0
    )
    return SmtpPeer("127.0.0.1", server.sockets[0].getsockname()[1], handler, server)


async def stop_smtp(peer: SmtpPeer) -> None:
    if isinstance(peer.handler, SinkHandler):
        peer.handler.release.set()
    peer.server.close()
    await asyncio.wait_for(peer.server.wait_closed(), 5)


@pytest_asyncio.fixture
async def sink() -> AsyncIterator[SmtpPeer]:
    peer = await start_smtp(SinkHandler())
    yield peer
    await stop_smtp(peer)


def refuse_every_password(
    server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
) -> AuthResult:
    return AuthResult(success=False, handled=False)


@pytest.fixture
def mail_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"SEND_BACKOFF_SECONDS": 0.0, "SEND_TIMEOUT_SECONDS": 10.0, "DEMO_SMTP_PORT": 0}
    )


@pytest.fixture
def runtime(mail_settings: Settings) -> Iterator[Runtime]:
    rt = Runtime.from_settings(mail_settings)
    yield rt
    rt.database.dispose()
