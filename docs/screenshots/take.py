#!/usr/bin/env python3
"""Take the README's screenshots from a seeded demo, in Debian's Chromium at 1366x900.

    .venv/bin/python docs/screenshots/take.py

Starts `mailbeacon serve` on loopback with a fresh data folder (SQLite), creates a
user who sends through the demo mailbox, sends a few sales emails through the JSON
API (one with a proposal attached), spreads them over the last weeks and records
opens and clicks by people and machines through the hit pipeline, then photographs
the Mail tab (with an open icon's hover list showing) and the first email's page, as a
viewer in New York sees them.
Writes mail-tab.png and email-detail.png next to this script.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import httpx
from sqlalchemy import update

HERE = Path(__file__).resolve().parent
CHROMIUM = Path("/usr/bin/chromium")
VIEWPORT = {"width": 1366, "height": 900}
TIME_ZONE = "America/New_York"
PASSWORD = "screenshot demo password"  # noqa: S105 (a throwaway demo account)
HUMAN = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Thunderbird/128.0"
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Mobile/15E148"
)
GMAIL_PROXY = (
    "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
)
SCANNER = "python-requests/2.32.3"
BODY = (
    '<p>Hello {first},</p><p>as promised, here is <a href="https://example.com/proposal">'
    'our proposal</a> and the <a href="https://example.com/pricing">pricing</a>. '
    "Happy to walk you through it on a call.</p><p>Best,<br>Sally</p>"
)
# (subject, To, Cc, days ago, attachment)
EMAILS = [
    ("Proposal for Northwind: Q1 rollout",
     ["Ann Baker <ann@northwind.example.com>", "Bob Chen <bob@northwind.example.com>"],
     ["Jöhn Müller <john@bücher.example.com>"], 2.1, True),
    ("Follow-up: pilot results", ["Dan Evans <dan@fabrikam.example.com>"], [], 1.2, False),
    ("Price list 2027", ["Carla Diaz <carla@contoso.example.com>"], [], 5.3, True),
    ("Intro call next week?", ["Erin Fox <erin@litware.example.com>"], [], 9.5, False),
    ("Contract draft for review", ["Fay Green <fay@adatum.example.com>"], [], 14.2, True),
    ("Welcome aboard", ["Gus Hill <gus@tailspin.example.com>"], [], 20.4, False),
    ("Webinar invitation", ["Ida Jones <ida@proseware.example.com>"], [], 26.1, False),
    ("Quick question about seats", ["Hal Ito <hal@wingtip.example.com>"], [], 0.1, False),
]  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def seed(base: str) -> list[int]:
    """Sign in, use the demo mailbox, send the emails; returns their ids."""
    import base64

    with httpx.Client(base_url=base, timeout=30) as web:
        page = web.get("/sign-in").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        web.post(
            "/sign-in",
            data={"email": "sally@example.com", "password": PASSWORD, "csrf_token": csrf},
        )
        page = web.get("/settings/email-sync").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        web.post("/settings/email-sync/demo", data={"csrf_token": csrf})
        proposal = b"%PDF-1.4\n% a proposal, for the screenshot\n" + b"0" * 182_000
        ids = []
        for subject, to, cc, _, attach in EMAILS:
            first = to[0].split()[0]
            r = web.post(
                "/api/messages",
                headers={"x-csrf-token": csrf},
                json={
                    "to": to,
                    "cc": cc,
                    "subject": subject,
                    "body_html": BODY.format(first=first),
                    "open_tracking": True,
                    "link_tracking": True,
                    "attachments": (
                        [{"filename": "Northwind proposal.pdf", "content_type": "application/pdf",
                          "data": base64.b64encode(proposal).decode()}]
                        if attach else []
                    ),
                },
            )  # fmt: skip
            r.raise_for_status()
            ids.append(int(r.json()["id"]))

        def delivered() -> bool:
            return all(
                all(c["status"] == "sent" for c in web.get(f"/api/mail/{i}").json()["recipients"])
                for i in ids
            )

        wait_for(delivered, "the demo mailbox to receive every copy")
        return ids


def age_and_hit(database_url: str, ids: list[int]) -> None:
    """Move each email back to when it was sent, and record what happened since."""
    from mailbeacon.config import Settings
    from mailbeacon.kit.clock import utcnow
    from mailbeacon.models import Message, RecipientCopy
    from mailbeacon.runtime import Runtime
    from mailbeacon.tracking.hits import Hit

    runtime = Runtime.from_settings(Settings(DATABASE_URL=database_url))
    copies: dict[str, int] = {}
    sent_at: dict[int, float] = {}
    with runtime.database.unit_of_work() as s:
        for message_id, (_, _, _, days, _) in zip(ids, EMAILS, strict=True):
            when = utcnow() - timedelta(days=days)
            sent_at[message_id] = when.timestamp()
            s.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(created_at=when, sent_at=when)
            )
            s.execute(
                update(RecipientCopy)
                .where(RecipientCopy.message_id == message_id)
                .values(sent_at=when)
            )
            for copy in s.query(RecipientCopy).filter_by(message_id=message_id):
                copies[copy.address.split("@")[0]] = copy.id
                copies[f"{copy.address.split('@')[0]}:message"] = message_id

    serial = [0]

    def hit(who: str, hours: float, kind: str = "open", ua: str = HUMAN,
            position: int | None = None, net: str = "203.0.113.0/24") -> Hit:  # fmt: skip
        serial[0] += 1
        start = sent_at[copies[f"{who}:message"]]
        return Hit(
            uid=f"{time.time_ns():016x}{serial[0]:016x}",
            kind=kind,  # type: ignore[arg-type]
            copy_id=copies[who],
            link_position=position,
            occurred_at=start + hours * 3600,
            user_agent=ua,
            ip_prefix=net,
            network=None,
            is_head=False,
            prefetch_hint=None,
            viewer_user_id=None,
        )

    runtime.pipeline.process(
        [
            hit("ann", 0.4),
            hit("ann", 0.45, "click", position=0),
            hit("ann", 20, ua=PHONE, net="198.51.100.0/24"),
            hit("ann", 30, "click", ua=PHONE, position=1, net="198.51.100.0/24"),
            hit("bob", 0.02, "click", ua=SCANNER, position=0, net="192.0.2.0/24"),
            hit("bob", 26, ua=GMAIL_PROXY, net="66.249.84.0/24"),
            hit("john", 3, ua=PHONE, net="198.51.100.0/24"),
            hit("dan", 1, ua=HUMAN),
            hit("dan", 2, "click", position=1),
            hit("carla", 0.01, ua=SCANNER, net="192.0.2.0/24"),
            hit("carla", 50, ua=HUMAN),
            hit("erin", 4, ua=GMAIL_PROXY, net="66.249.84.0/24"),
            hit("fay", 0.01, "click", ua=SCANNER, position=0, net="192.0.2.0/24"),
            hit("fay", 6, ua=HUMAN),
            hit("fay", 7, "click", position=0),
            hit("gus", 2, ua=PHONE, net="198.51.100.0/24"),
            hit("ida", 0.01, ua=SCANNER, net="192.0.2.0/24"),
        ]
    )
    runtime.database.dispose()


async def photograph(base: str, first_id: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        context = await browser.new_context(
            viewport=VIEWPORT, device_scale_factor=1, timezone_id=TIME_ZONE
        )
        page = await context.new_page()
        await page.goto(base + "/sign-in")
        await page.get_by_label("Email").fill("sally@example.com")
        await page.get_by_label("Password").fill(PASSWORD)
        await page.get_by_role("button", name="Sign in").click()
        await page.wait_for_load_state()
        # Saved outright rather than left to the browser's first report, so that every
        # time on the pages, the charts' axes and days included, is New York's.
        await page.goto(base + "/settings/account")
        await page.locator("select#time_zone").select_option(TIME_ZONE)
        await page.get_by_role("button", name="Save time zone").click()
        await page.wait_for_load_state()

        await page.goto(base + "/mail")
        await page.locator(f"#mail-{first_id} .mb-icon-open").hover()
        await page.wait_for_timeout(400)
        await page.screenshot(path=str(HERE / "mail-tab.png"))

        await page.goto(f"{base}/mail/{first_id}")
        await page.wait_for_load_state()
        # A table cut off at the right edge (scrolling inside itself) is not what a
        # README should show at desktop width.
        clipped = await page.evaluate(
            "[...document.querySelectorAll('.mb-scroll')]"
            ".filter(e => e.scrollWidth > e.clientWidth).length"
        )
        if clipped:
            raise SystemExit(f"{clipped} table(s) on the email's page scroll at 1366 px")
        await page.screenshot(path=str(HERE / "email-detail.png"))
        if os.environ.get("SCREENSHOT_FULL_PAGES"):
            await page.screenshot(path=os.environ["SCREENSHOT_FULL_PAGES"] + "/detail.png",
                                  full_page=True)  # fmt: skip
            await page.goto(base + "/mail")
            await page.screenshot(path=os.environ["SCREENSHOT_FULL_PAGES"] + "/tab.png",
                                  full_page=True)  # fmt: skip
        await browser.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        database_url = f"sqlite:///{data}/mailbeacon.db"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("MAILBEACON_")},
            "MAILBEACON_DATA_DIR": str(data),
            "MAILBEACON_DATABASE_URL": database_url,
            "MAILBEACON_BASE_URL": base,
            "MAILBEACON_TOO_FAST_SECONDS": "0",
            "MAILBEACON_DEMO_SMTP_PORT": str(free_port()),
        }
        subprocess.run(
            [sys.executable, "-m", "mailbeacon.cli", "user", "create", "--email",
             "sally@example.com", "--name", "Sally Seller", "--org", "Acme",
             "--password-stdin"],
            env=env, input=PASSWORD + "\n", text=True, check=True, capture_output=True,
        )  # fmt: skip
        server = subprocess.Popen(  # noqa: S603 (this interpreter, fixed arguments)
            [sys.executable, "-m", "mailbeacon.cli", "serve", "--data-dir", str(data),
             "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:

            def up() -> bool:
                try:
                    return bool(httpx.get(f"{base}/healthz", timeout=1).status_code == 200)
                except httpx.HTTPError:
                    return False

            wait_for(up, "mailbeacon serve")
            ids = seed(base)
            age_and_hit(database_url, ids)
            asyncio.run(photograph(base, ids[0]))
        finally:
            server.terminate()
            server.wait(timeout=15)
    print(f"wrote {HERE / 'mail-tab.png'} and {HERE / 'email-detail.png'}")


if __name__ == "__main__":
    main()
