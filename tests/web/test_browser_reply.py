"""A reply shows up live, in headless Chromium against a real `mailbeacon serve`.

Send to Carla through the demo mailbox, keep the Mail tab open, reply as Carla
from the Demo inbox in another tab, and see on the Mail tab, without reloading
it, the reply marker on the email and the bell counting the reply (after her open); the bell's
feed says "Carla Buyer replied to “Pricing”", and the email's page shows her
words with the quoted history folded away.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from tests.web.test_browser_send import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP_CHROME,
    PASSWORD,
    SCREENSHOTS,
    cli,
    server,
    sign_in_with_demo_mailbox,
)

__all__ = ["server"]  # the fixture: `mailbeacon serve` on free ports

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.browser,
    pytest.mark.slow,
    # In CI a missing browser is a failure (.ci/run installs it), never a silent skip.
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed at /usr/bin/chromium",
    ),
]

BODY = '<p>Hello Carla,</p><p>here is <a href="https://example.com/pricing">our pricing</a>.</p>'


async def test_a_reply_from_the_demo_inbox_shows_on_the_mail_tab_live(
    server: dict[str, Any],
) -> None:
    from playwright.async_api import async_playwright, expect

    base, env = server["base"], server["env"]
    cli(
        env,
        "user", "create", "--email", "sally@example.com", "--name", "Sally Seller",
        "--org", "Acme", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip
    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--user-agent={DESKTOP_CHROME}"]
        )
        context = await browser.new_context(
            user_agent=DESKTOP_CHROME, viewport={"width": 1200, "height": 800}
        )
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            await sign_in_with_demo_mailbox(page, base)

            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            assert csrf
            sent = await page.request.post(
                f"{base}/api/messages",
                data={
                    "to": ["Carla Buyer <carla@example.org>"],
                    "subject": "Pricing",
                    "body_html": BODY,
                    "open_tracking": True,
                    "link_tracking": True,
                },
                headers={"x-csrf-token": csrf},
            )
            assert sent.status == 202, await sent.text()
            message_id = (await sent.json())["id"]
            deadline = time.monotonic() + 30
            while True:
                r = await page.request.get(f"{base}/api/mail/{message_id}")
                if all(x["status"] == "sent" for x in (await r.json())["recipients"]):
                    break
                assert time.monotonic() < deadline, "the copy was not delivered"
                await page.wait_for_timeout(250)

            # The Mail tab, open and connected: no reply yet.
            await page.goto(base + "/mail")
            row = page.locator(f"#mail-{message_id}")
            await expect(row.locator(".mb-subject")).to_have_text("Pricing")
            await expect(row.locator(".mb-reply-marker")).to_have_count(0)
            bell = page.locator("#mb-bell")
            await expect(bell).to_have_attribute("data-unread", "0")  # the stream is up
            await page.evaluate("window.__notReloaded = true")

            # Carla replies, from her copy in the Demo inbox, in another tab.
            inbox = await context.new_page()
            await inbox.goto(base + "/demo-inbox")
            await (
                inbox.get_by_role("region", name="carla@example.org")
                .get_by_role("link", name="Pricing")
                .click()
            )
            await inbox.get_by_label("Reply text").fill("Thursday at ten works for us.")
            await inbox.get_by_role("button", name="Reply as carla@example.org").click()
            await expect(inbox.get_by_text("The reply was sent back")).to_be_visible()

            # Back on the Mail tab, without a reload: the marker and the bell.
            marker = row.locator(".mb-reply-marker")
            await expect(marker).to_be_visible()
            await expect(marker).to_have_attribute("data-reply-count", "1")
            # Two: reading her copy in the Demo inbox opened it, then she replied.
            await expect(page.locator("#mb-bell-count")).to_have_text("2")
            await expect(row.locator('li[data-address="carla@example.org"]')).to_contain_text(
                "replied"
            )
            assert await page.evaluate("window.__notReloaded === true")
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-mail-tab-reply.png"))

            await bell.click()
            await expect(page.get_by_text("Carla Buyer replied to “Pricing”")).to_be_visible()

            # The email's page: her words, the quoted email folded away.
            await page.goto(f"{base}/mail/{message_id}")
            reply = page.locator(".mb-reply").first
            await expect(reply.locator(".mb-reply-text")).to_have_text(
                "Thursday at ten works for us."
            )
            quoted = reply.locator("details")
            await expect(quoted).not_to_have_attribute("open", "")
            await quoted.locator("summary").click()
            frame = reply.frame_locator("iframe.mail-frame")
            link = frame.get_by_role("link", name="our pricing")
            await expect(link).to_have_attribute("href", "https://example.com/pricing")
            await page.screenshot(
                path=str(SCREENSHOTS / "mailbeacon-mail-reply.png"), full_page=True
            )
        finally:
            await context.close()
            await browser.close()
