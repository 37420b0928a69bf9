"""The Mail tab updates live, in headless Chromium against a real `mailbeacon serve`.

Send to two recipients through the demo mailbox, keep the Mail tab open in one
tab, read Ann's copy in the Demo inbox in another, and see on the Mail tab,
without reloading it, the bell count rise, the open icon turn solid, and the
hover name Ann and the time; Bob stays unopened.
"""

from __future__ import annotations

import os
import re
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

BODY = (
    '<p>Hello Ann and Bob,</p><p>here is <a href="https://example.com/pricing">our pricing</a>.'
    "</p><p>Sally</p>"
)


async def test_the_mail_tab_shows_an_open_live(server: dict[str, Any]) -> None:
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

            # Send to Ann and Bob (through the JSON API, as this browser's session).
            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            assert csrf
            sent = await page.request.post(
                f"{base}/api/messages",
                data={
                    "to": ["ann@example.org", "Bob <bob@example.com>"],
                    "subject": "Our pricing",
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
                assert time.monotonic() < deadline, "the copies were not delivered"
                await page.wait_for_timeout(250)

            # The Mail tab, open and connected: nothing happened yet.
            await (
                page.get_by_role("navigation", name="Main")
                .get_by_role("link", name="Mail", exact=True)
                .click()
            )
            await expect(page).to_have_url(f"{base}/mail")
            row = page.locator(f"#mail-{message_id}")
            open_icon = row.locator(".mb-icon-open")
            await expect(open_icon).to_have_attribute("data-state", "waiting")
            bell = page.locator("#mb-bell")
            await expect(bell).to_have_attribute("data-unread", "0")  # the stream is up
            await expect(page.locator("#mb-bell-count")).to_be_hidden()
            await page.evaluate("window.__notReloaded = true")

            # Ann reads her copy in another tab.
            inbox = await context.new_page()
            await inbox.goto(base + "/demo-inbox")
            await (
                inbox.get_by_role("region", name="ann@example.org")
                .get_by_role("link", name="Our pricing")
                .click()
            )
            frame = inbox.frame_locator("iframe.mail-frame")
            await expect(frame.get_by_role("link", name="our pricing")).to_be_visible()

            # Back on the Mail tab, without a reload.
            await expect(page.locator("#mb-bell-count")).to_have_text("1")
            await expect(bell).to_have_attribute("aria-label", "Sales Assistant, 1 unread")
            await expect(open_icon).to_have_attribute("data-state", "done")
            assert await page.evaluate("window.__notReloaded === true")
            await open_icon.hover()
            tip = page.locator(f"#tip-open-{message_id}")
            await expect(tip).to_be_visible()
            await expect(tip).to_contain_text("Opened 1 time")
            await expect(tip).to_contain_text("ann@example.org")
            await expect(tip).to_contain_text("opened")
            # The live row is in the same format as a rendered page: relative, exact on hover.
            await expect(tip.locator("time")).to_have_text(re.compile(r"^(just now|\d+ min ago)$"))
            await expect(tip.locator("time")).to_have_attribute(
                "title", re.compile(r"^\w{3} \d+ \w{3} \d{4}, \d\d:\d\d:\d\d UTC$")
            )
            assert "bob@example.com" not in await tip.inner_text()
            await expect(row.locator('li[data-address="ann@example.org"]')).to_have_class(
                re.compile(r"\bmb-opened\b")
            )
            await expect(row.locator('li[data-address="bob@example.com"]')).not_to_have_class(
                re.compile(r"\bmb-opened\b")
            )
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-mail-tab.png"))

            # The detail: Ann opened, Bob did not; the body as written, without its tracking.
            await row.get_by_role("link", name="Our pricing").click()
            await expect(page.locator('tr[data-address="ann@example.org"] td').nth(5)).to_have_text(
                "1"
            )
            await expect(page.locator('tr[data-address="bob@example.com"] td').nth(5)).to_have_text(
                "0"
            )
            body = page.frame_locator("iframe.mail-frame").get_by_role("link", name="our pricing")
            await expect(body).to_have_attribute("href", "https://example.com/pricing")
            # Headless Chromium paints an off-screen frame only once it is scrolled to.
            await page.locator("iframe.mail-frame").evaluate("frame => frame.scrollIntoView()")
            await expect(body).to_be_visible()
            await page.wait_for_timeout(300)
            await page.screenshot(
                path=str(SCREENSHOTS / "mailbeacon-mail-detail.png"), full_page=True
            )
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-mail-body.png"))

            # The bell's dropdown has the notification, and "See all" leads to the Sales
            # Assistant, which has it too.
            await bell.click()
            await expect(
                page.locator("#mb-bell-panel").get_by_text("ann@example.org opened “Our pricing”")
            ).to_be_visible()
            await page.locator("#mb-bell-panel").get_by_role("link", name="See all").click()
            await expect(page).to_have_url(re.compile(r"/assistant$"))
            await expect(page.get_by_text("ann@example.org opened “Our pricing”")).to_be_visible()
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-assistant.png"))
        finally:
            await context.close()
            await browser.close()
