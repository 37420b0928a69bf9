#!/usr/bin/env python3
"""Personalised copies per second through the outbox worker, beside plain aiosmtplib.

    .venv/bin/python bench/send.py [--recipients 600] [--rounds 5] [--concurrency 3]
                                   [--database-url URL]

Each round plans one email to N recipients (To, Cc and many Bcc; every copy with its
own open pixel and click tokens), then times ``OutboxWorker.run_once()`` delivering
them: claim, MIME, one SMTP transaction per recipient, outcome written. The
reference sends the very same N pre-built messages (the bytes the worker sent,
built before the clock starts) with plain aiosmtplib over the same number of
connections, one transaction per message, nothing written anywhere. Both talk to
one aiosmtpd sink running in its own process on loopback. Prints the medians of
the rounds and of their ratios; the target is at least 0.7x the plain rate.

SQLite (synchronous=FULL, in a fresh temporary data folder) unless --database-url
points at PostgreSQL (its tables must exist: `mailbeacon db upgrade` first).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import aiosmtplib  # noqa: E402
from sqlalchemy import select  # noqa: E402

from mailbeacon.config import Settings  # noqa: E402
from mailbeacon.db import is_sqlite  # noqa: E402
from mailbeacon.mail.mime import CopyTemplate, VisibleHeaders  # noqa: E402
from mailbeacon.mail.schemas import Draft  # noqa: E402
from mailbeacon.mail.service import message_service  # noqa: E402
from mailbeacon.migrate import upgrade  # noqa: E402
from mailbeacon.models import (  # noqa: E402
    CopyStatus,
    MailboxConnection,
    Message,
    Organisation,
    RecipientCopy,
    Security,
    User,
)
from mailbeacon.runtime import Runtime  # noqa: E402

SINK = r"""
import asyncio, sys
from aiosmtpd.smtp import SMTP

class Sink:
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 OK"

async def main():
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(Sink(), hostname="sink.bench", loop=loop), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

BODY = (
    "<html><body style='font-family:sans-serif'>"
    "<p>Hi there,</p>"
    "<p>Following up on our call: the <a href='https://example.com/offer?utm_source=mail'>"
    "spring offer</a> is ready, and the <a href='https://example.com/pricing'>pricing "
    "page</a> has the details for teams of every size.</p>"
    + "<p>Paragraph of ordinary sales prose, long enough to look like a real email, with "
    "an occasional <b>bold</b> word and a <a href='https://example.com/case-study'>case "
    "study</a> link.</p>"
    * 6
    + "<p>Book a slot in <a href='https://calendar.example.com/sally'>my calendar</a>."
    "</p><p>Best,<br>Sally</p></body></html>"
)


def plan_round(runtime: Runtime, user_id: int, recipients: int, round_no: int) -> int:
    addresses = [f"person{round_no}-{i}@example.org" for i in range(recipients)]
    draft = Draft(
        to=addresses[:2],
        cc=addresses[2:3],
        bcc=addresses[3:],
        subject=f"Spring offer (round {round_no})",
        body_html=BODY,
    )
    with runtime.database.unit_of_work() as s:
        user = s.get_one(User, user_id)
        message = message_service.plan_send(s, user, draft, instrumenter=runtime.tracking)
        return message.id


def prebuilt(runtime: Runtime, message_id: int) -> list[tuple[str, bytes]]:
    """The same personalised copies, rendered before the plain reference's clock starts."""
    with runtime.database.sessions() as s:
        message = s.get_one(Message, message_id)
        headers = VisibleHeaders(
            sender_name=message.sender_name,
            sender_address=message.sender_address,
            to=message.to_header,
            cc=message.cc_header,
            subject=message.subject,
            date=message.created_at,
            message_id=message.message_id_header,
        )
        template = CopyTemplate.build(headers, has_html=message.body_html is not None)
        rows = s.scalars(select(RecipientCopy).where(RecipientCopy.message_id == message_id))
        return [(c.address, template.render(html=c.html_body, text=c.text_body)) for c in rows]


async def send_plain(
    port: int, sender: str, messages: list[tuple[str, bytes]], connections: int
) -> float:
    async def lane(share: list[tuple[str, bytes]]) -> None:
        smtp = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=port, start_tls=False, local_hostname="bench"
        )
        await smtp.connect()
        for rcpt, data in share:
            await smtp.sendmail(sender, [rcpt], data)
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(lane(messages[i::connections]) for i in range(connections)))
    return time.perf_counter() - started


async def run(args: argparse.Namespace, port: int) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="mb-bench-send-")
    try:
        settings = Settings(
            DATA_DIR=Path(tmp.name),
            DATABASE_URL=args.database_url or "",
            BASE_URL="https://track.example.com",
            SEND_CONCURRENCY=args.concurrency,
            DEMO_SMTP_PORT=0,
            # The sink is an aiosmtpd on this machine (issue 8: loopback only when allowed).
            ALLOW_LOOPBACK_MAIL_SERVERS=True,
        )
        if is_sqlite(settings.database_url()):
            upgrade(settings.database_url())
        runtime = Runtime.from_settings(settings)
        with runtime.database.unit_of_work() as s:
            # Tracked copies, as a send with consent would be (issue 10's default asks for it).
            org = Organisation(name="Bench", consent_required=False)
            s.add(org)
            s.flush()
            user = User(
                organisation_id=org.id,
                email=f"sally-{time.time_ns()}@example.com",
                display_name="Sally Seller",
            )
            s.add(user)
            s.flush()
            s.add(
                MailboxConnection(
                    user_id=user.id,
                    sender_name="Sally Seller",
                    sender_address="sally@example.com",
                    smtp_host="127.0.0.1",
                    smtp_port=port,
                    smtp_security=Security.NONE,
                )
            )
            user_id = user.id
        ours: list[float] = []
        plain: list[float] = []
        plans: list[float] = []
        messages: list[tuple[str, bytes]] = []
        for round_no in range(args.rounds):
            started = time.perf_counter()
            message_id = plan_round(runtime, user_id, args.recipients, round_no)
            plans.append(time.perf_counter() - started)

            worker = runtime.make_outbox_worker(concurrency=args.concurrency)
            started = time.perf_counter()
            handled = await worker.run_once()
            elapsed = time.perf_counter() - started
            with runtime.database.sessions() as s:
                sent = s.scalars(
                    select(RecipientCopy.status).where(RecipientCopy.message_id == message_id)
                ).all()
            if handled != args.recipients or set(sent) != {CopyStatus.SENT}:
                raise SystemExit(f"round {round_no}: {handled} handled, statuses {set(sent)}")
            ours.append(args.recipients / elapsed)

            messages = prebuilt(runtime, message_id)
            elapsed = await send_plain(port, "sally@example.com", messages, args.concurrency)
            plain.append(len(messages) / elapsed)
            print(
                f"round {round_no + 1}: outbox worker {ours[-1]:5.0f} copies/s, "
                f"plain aiosmtplib {plain[-1]:5.0f} msgs/s, ratio {ours[-1] / plain[-1]:.2f}",
                file=sys.stderr,
            )
        runtime.database.dispose()
    finally:
        tmp.cleanup()

    backend = "sqlite" if is_sqlite(settings.database_url()) else "postgresql"
    size = statistics.median(len(m) for _, m in messages)
    # Each round's two runs are back to back, so their ratio is the least disturbed by
    # whatever else the machine is doing; the median of those is the figure.
    ratio = statistics.median(o / p for o, p in zip(ours, plain, strict=True))
    print(
        f"{args.recipients} recipients x {args.rounds} rounds, {args.concurrency} SMTP "
        f"connections, {backend}, copies of {size / 1024:.1f} KiB"
    )
    print(
        f"planning (instrument + store)  {args.recipients / statistics.median(plans):6.0f} copies/s"
    )
    print(f"outbox worker (personalised)   {statistics.median(ours):6.0f} copies/s")
    print(f"plain aiosmtplib (pre-built)   {statistics.median(plain):6.0f} msgs/s")
    print(f"ratio (median of the rounds')  {ratio:6.2f}x   (target >= 0.70x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipients", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    # The sink runs in its own process, so it does not share a core (or the GIL)
    # with the side being measured.
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE, text=True)
    try:
        assert sink.stdout is not None
        asyncio.run(run(args, int(sink.stdout.readline())))
    finally:
        sink.kill()
        sink.wait()


if __name__ == "__main__":
    main()
