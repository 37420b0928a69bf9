"""The built-in demo mailbox: an SMTP server on loopback that accepts every message.

With no mailbox configured, a user can still send: the demo connection points at
this server, which stores what it receives in ``demo_messages`` for the Demo
inbox page. It listens on a loopback address only and never relays anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import weakref
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from mailbeacon.config import DEMO_SMTP_HOST
from mailbeacon.db import Database
from mailbeacon.kit.clock import utcnow
from mailbeacon.kit.net import is_loopback_host
from mailbeacon.mail import repository

log = logging.getLogger(__name__)

# Room for an email carrying the default 20 MB of attachments, which base64 makes 27 MB
# on the wire (RFC 2045 section 6.8).
DEMO_SIZE_LIMIT = 40 * 1024 * 1024


class _StoreHandler:
    """aiosmtpd handler: every recipient accepted, every message stored."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8", errors="surrogateescape")
        try:
            await asyncio.to_thread(
                self._store, envelope.mail_from or "", list(envelope.rcpt_tos), raw
            )
        except Exception:
            log.exception("demo mailbox could not store a message")
            # 451: the sender keeps the message and tries again (RFC 5321 section 4.2.3).
            return "451 4.3.0 The demo inbox could not store the message; try again later"
        return "250 2.0.0 Delivered to the demo inbox"

    def _store(self, mail_from: str, recipients: list[str], raw: bytes) -> None:
        with self.database.unit_of_work() as session:
            repository.store_demo_message(session, mail_from, recipients, raw, utcnow())


class DemoSmtpServer:
    """Runs on the caller's event loop (inside ``serve``); loopback addresses only."""

    def __init__(self, database: Database, host: str = DEMO_SMTP_HOST, port: int = 2525) -> None:
        if not is_loopback_host(host):
            raise ValueError(f"the demo mailbox listens on loopback only, not {host!r}")
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()
        self._handler = _StoreHandler(database)

    def _make_session(self) -> SMTP:
        smtp = SMTP(
            self._handler,
            hostname="mailbeacon-demo",
            data_size_limit=DEMO_SIZE_LIMIT,
            enable_SMTPUTF8=True,
            loop=asyncio.get_running_loop(),
        )
        self._sessions.add(smtp)
        return smtp

    async def start(self) -> None:
        """Listen; a port already taken (another ``serve`` process has it) is logged, not fatal."""
        if self._server is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            self._server = await loop.create_server(self._make_session, self.host, self.port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            log.warning(
                "demo mailbox: %s:%d is in use; not started in this process", self.host, self.port
            )
            return
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("demo mailbox listening on %s:%d", self.host, self.port)

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for smtp in list(self._sessions):
            transport: Any = smtp.transport
            if transport is not None:
                transport.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)

    @property
    def running(self) -> bool:
        return self._server is not None
