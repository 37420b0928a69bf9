"""A reserved copy's SMTP transaction begins while its start commits; DATA waits for it."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlalchemy import text, update

from mailbeacon.db import Database
from mailbeacon.mail.queue import ClaimedCopy
from mailbeacon.mail.tasks import _Plan
from mailbeacon.models import CopyStatus, Message, RecipientCopy
from mailbeacon.runtime import Runtime
from tests.factories.accounts import make_smtp_sender
from tests.factories.mail import plan
from tests.mail.conftest import SinkHandler, SmtpPeer, start_smtp, stop_smtp
from tests.mail.test_worker import copies, plan_send

pytestmark = pytest.mark.asyncio

HOLD_SECONDS = 1.0


@dataclass
class LockingSink(SinkHandler):
    """Times each RCPT and DATA; once the first message is in, another connection holds
    the copies' table (SQLite: the write lock) for HOLD_SECONDS, so the worker's next
    round, which starts the next copy, waits for it."""

    database: Database | None = None
    seen: list[tuple[str, str, float]] = field(default_factory=list)
    released_at: float = 0.0
    holder: threading.Thread | None = None

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        self.seen.append(("rcpt", address, time.monotonic()))
        return await super().handle_RCPT(server, session, envelope, address, options)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.seen.append(("data", envelope.rcpt_tos[0], time.monotonic()))
        if self.holder is None:
            locked = threading.Event()
            self.holder = threading.Thread(target=self._hold, args=(locked,))
            self.holder.start()
            # Answered once the lock is held: the worker's round after this copy waits.
            await asyncio.to_thread(locked.wait, 10)
        return await super().handle_DATA(server, session, envelope)

    def _hold(self, locked: threading.Event) -> None:
        assert self.database is not None
        with self.database.unit_of_work() as s:
            if self.database.is_sqlite:
                # The first statement begins the transaction, with the write lock.
                s.execute(text("SELECT 1"))
            else:
                s.execute(text("LOCK TABLE recipient_copies IN EXCLUSIVE MODE"))
            locked.set()
            time.sleep(HOLD_SECONDS)
            self.released_at = time.monotonic()


async def test_data_waits_for_the_start_to_commit(database: Database, runtime: Runtime) -> None:
    handler = LockingSink(database=Database(database.url))
    peer = await start_smtp(handler)
    try:
        addresses = ["ann@example.org", "bob@example.org", "carl@example.org"]
        message_id = plan_send(database, runtime, peer.port, to=[", ".join(addresses)])
        # One lane: the first copy is claimed, the others reserved and started one by one.
        worker = runtime.make_outbox_worker(concurrency=1)
        assert worker.reserve_ahead > 0
        assert await worker.run_once() == 3
        assert handler.holder is not None
        handler.holder.join()
    finally:
        await stop_smtp(peer)
        assert handler.database is not None
        handler.database.dispose()

    assert sorted(r.rcpt_tos[0] for r in handler.accepted) == addresses  # each once
    assert {c.status for c in copies(database, message_id).values()} == {CopyStatus.SENT}
    events = {(kind, address): at for kind, address, at in handler.seen}
    second = handler.accepted[1].rcpt_tos[0]
    # Its envelope went out while the start was held up (that is the saving) ...
    assert events[("rcpt", second)] < handler.released_at
    # ... and its message only once the start had committed.
    assert events[("data", second)] > handler.released_at


async def test_a_copy_its_start_round_claims_anew_is_sent_once(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # Found by review. Message A's mailbox is gone: its two copies fail at once, before
    # any SMTP, and both lanes free up together. B's one copy, X, is reserved by the
    # first round. Just before the round that starts X, its reservation is released
    # (as another worker's recovery does to a worker it takes for dead): that round
    # does not start X, and claims it anew. X's early transaction resets; the claim
    # must still be begun, and X sent once.
    with database.unit_of_work() as s:
        user = make_smtp_sender(s, port=sink.port)
        a = plan(s, runtime, user, to=["a1@example.org", "a2@example.org"]).id
        b = plan(s, runtime, user, to=["x@example.org"]).id
        s.execute(update(Message).where(Message.id == a).values(mailbox_connection_id=None))
    x_id = copies(database, b)["x@example.org"].id
    worker = runtime.make_outbox_worker(concurrency=2)
    assert worker.reserve_ahead > 0
    real_round = worker._settle_and_claim
    released: list[int] = []

    def releasing_round(settlements: Any, want: int, start: Any = (), reserve: int = 0) -> Any:
        if any(c.id == x_id for c in start) and not released:
            with database.unit_of_work() as s:
                s.execute(
                    update(RecipientCopy)
                    .where(RecipientCopy.id == x_id, RecipientCopy.status == CopyStatus.QUEUED)
                    .values(claimed_by=None, claimed_at=None)
                )
            released.append(x_id)
        return real_round(settlements, want, start, reserve)

    worker._settle_and_claim = releasing_round  # type: ignore[method-assign]
    await worker.run_once()
    assert released == [x_id]
    x = copies(database, b)["x@example.org"]
    assert (x.status, x.attempts) == (CopyStatus.SENT, 1)
    assert [r.rcpt_tos for r in sink.handler.accepted] == [["x@example.org"]]


async def test_a_started_copy_whose_task_is_cancelled_keeps_its_outcome(
    database: Database, runtime: Runtime, sink: SmtpPeer
) -> None:
    # Found by review: a copy failed before any SMTP (no mailbox), its task waiting for
    # the gate; the round commits its start (the gate says yes) and the pass is
    # cancelled before the task resumes. The outcome must still be written.
    if not database.is_sqlite:
        pytest.skip("the worker's own bookkeeping: one backend is enough")
    message_id = plan_send(database, runtime, sink.port, to=["x@example.org"])
    worker = runtime.make_outbox_worker(concurrency=1)
    x = copies(database, message_id)["x@example.org"]
    copy = ClaimedCopy(x.id, message_id, x.address, None, "Hi", 1)
    worker._plans[message_id] = _Plan(context=None, smtp=None, problem="no mailbox")  # type: ignore[arg-type]
    gate = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(worker._deliver(copy, gate))
    for _ in range(3):
        await asyncio.sleep(0)  # the attempt has failed; the task waits for the gate
    gate.set_result(True)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert [(s.copy_id, s.status, s.reply) for s in worker._abandoned] == [
        (x.id, CopyStatus.FAILED, "no mailbox")
    ]
