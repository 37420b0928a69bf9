"""From an empty data folder to the first tracked open, in headless Chromium only.

A fresh `mailbeacon serve` opens on "Create your account"; the browser (in New
York's time zone) creates it, takes the demo mailbox, composes, sends, opens the
copy in the Demo inbox, and sees the open: in local time, in the bell's
dropdown. Then every main page, at 1366 px and at 390 px wide, is screenshotted
and checked for horizontal overflow.
"""

from __future__ import annotations

import os
import re
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.web.test_browser_send import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP_CHROME,
    server,  # noqa: F401 (the fixture)
)

PASSWORD = "correct horse battery staple"
NEW_YORK = ZoneInfo("America/New_York")
ROOT = Path(__file__).resolve().parents[2]
# Test artefacts, never committed (var/ is git-ignored).
SCREENSHOTS = Path(os.environ.get("MAILBEACON_SCREENSHOT_DIR") or ROOT / "var" / "screenshots")

SCREENSHOTS.mkdir(parents=True, exist_ok=True)

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed at /usr/bin/chromium",
    ),
]


def new_york_exact(iso: str) -> str:
    """What the page's hover text says of an API time (ISO 8601, UTC), in New York."""
    local = datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone(NEW_YORK)
    return f"{local.hour:02d}:{local.minute:02d}:{local.second:02d} {local.tzname()}"


async def no_horizontal_overflow(page: Any) -> tuple[int, int]:
    sizes: list[int] = await page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    return sizes[0], sizes[1]


async def test_first_run_to_first_tracked_open_in_the_browser(
    server: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    from playwright.async_api import async_playwright, expect

    base = server["base"]
    backend = "postgresql" if "postgresql" in server["env"]["MAILBEACON_DATABASE_URL"] else "sqlite"
    # A long name with no space to break at: the detail page must still fit a phone.
    attachment = tmp_path / "Preisliste_und_Angebot_für_Müller_Söhne_Q1_2027_final.pdf"
    attachment.write_bytes(b"%PDF-1.4\n" + b"0" * 4000)

    async with async_playwright() as p:
        browser = await p.chromium.launch(
            executable_path=str(CHROMIUM), args=[*CHROMIUM_ARGS, f"--user-agent={DESKTOP_CHROME}"]
        )
        context = await browser.new_context(
            user_agent=DESKTOP_CHROME,
            viewport={"width": 1366, "height": 900},
            timezone_id="America/New_York",
        )
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            # A fresh server opens on its first account.
            await page.goto(base + "/")
            await expect(page).to_have_url(f"{base}/create-account")
            await expect(page.get_by_role("heading", name="Create your account")).to_be_visible()
            await page.screenshot(path=str(SCREENSHOTS / "create-account-1366.png"))
            await page.get_by_label("Name", exact=True).fill("Sally Seller")
            await page.get_by_label("Email", exact=True).fill("sally@example.com")
            await page.get_by_label("Password", exact=True).fill(PASSWORD)
            await page.get_by_label("Organisation name (optional)").fill("Acme")
            await page.get_by_role("button", name="Create account").click()
            await expect(page.get_by_text("Welcome! To try mailbeacon at once")).to_be_visible()

            # The browser told the server its zone on that first page.
            async def stored_zone() -> str:
                await page.goto(base + "/settings/account")
                return str(await page.locator("select#time_zone").input_value())

            deadline = time.monotonic() + 15
            while await stored_zone() != "America/New_York":
                assert time.monotonic() < deadline, "the browser's time zone was not saved"
                await page.wait_for_timeout(250)

            # The demo mailbox, then compose and send.
            await page.goto(base + "/settings/email-sync")
            await page.get_by_role("button", name="Use the demo mailbox").click()
            await expect(page.get_by_text("You now send through the demo mailbox")).to_be_visible()
            await page.get_by_role("link", name="Compose").click()
            await page.get_by_label("To", exact=True).fill("ann@example.org")
            await page.get_by_label("Subject").fill("Our pricing")
            await page.get_by_role("textbox", name="Message", exact=True).click()
            await page.keyboard.type("Hello Ann, here is our pricing.")
            await page.get_by_label("Attachments").set_input_files([str(attachment)])
            await expect(page.get_by_label("Enable open tracking")).to_be_checked()
            await page.get_by_role("button", name="Send").click()
            await expect(page.get_by_text("being sent in the background")).to_be_visible()
            message_id = int(page.url.split("/mail/")[1].split("?")[0])

            async def mail() -> dict[str, Any]:
                r = await page.request.get(f"{base}/api/mail/{message_id}")
                found: dict[str, Any] = await r.json()
                return found

            deadline = time.monotonic() + 30
            while any(x["status"] != "sent" for x in (await mail())["recipients"]):
                assert time.monotonic() < deadline, "the copy was not delivered"
                await page.wait_for_timeout(250)

            # Open it in the Demo inbox, as Ann would.
            await page.get_by_role("link", name="Demo inbox").click()
            await expect(page.get_by_text("your own views here count as the")).to_be_visible()
            await (
                page.get_by_role("region", name="ann@example.org")
                .get_by_role("link", name="Our pricing")
                .click()
            )
            await expect(
                page.frame_locator("iframe.mail-frame").get_by_text("Hello Ann")
            ).to_be_visible()
            demo_url = page.url

            deadline = time.monotonic() + 30
            while not (await mail())["recipients"][0]["open_count"]:
                assert time.monotonic() < deadline, "the open was not recorded"
                await page.wait_for_timeout(250)
            found = await mail()
            ann = found["recipients"][0]
            # The API stays ISO 8601 in UTC.
            assert ann["first_open_at"].endswith(("Z", "+00:00")), ann["first_open_at"]

            # The detail shows it in New York time, relative, exact on hover.
            await page.goto(f"{base}/mail/{message_id}")
            first_open = page.locator(f"#recipient-{ann['copy_id']} time[data-local]").first
            await expect(first_open).to_have_text("just now")
            title = await first_open.get_attribute("title")
            assert title is not None and title.endswith(new_york_exact(ann["first_open_at"])), title
            await page.screenshot(path=str(SCREENSHOTS / "detail-1366.png"), full_page=True)

            # The Mail tab: the open icon is solid; the sent time is New York's too.
            await (
                page.get_by_role("navigation", name="Main")
                .get_by_role("link", name="Mail", exact=True)
                .click()
            )
            row = page.locator(f"#mail-{message_id}")
            await expect(row.locator(".mb-icon-open")).to_have_attribute("data-state", "done")
            sent = row.locator("td.mb-when time")
            sent_title = await sent.get_attribute("title")
            assert sent_title is not None
            assert sent_title.endswith(new_york_exact(found["sent_at"])), sent_title

            # The bell's dropdown: the open is there, unread; mark it read there.
            bell = page.locator("#mb-bell")
            await expect(page.locator("#mb-bell-count")).to_have_text("1")
            await bell.click()
            panel = page.locator("#mb-bell-panel")
            await expect(panel).to_be_visible()
            await expect(bell).to_have_attribute("aria-expanded", "true")
            item = panel.locator(".mb-bell-item").first
            await expect(item).to_have_class("mb-bell-item mb-unread")
            await expect(item).to_contain_text("First open")
            await page.screenshot(path=str(SCREENSHOTS / "bell-1366.png"))
            await item.get_by_role("button", name="Mark read").click()
            await expect(panel.locator(".mb-bell-item").first).to_have_class("mb-bell-item")
            await expect(page.locator("#mb-bell-count")).to_be_hidden()
            await page.keyboard.press("Escape")
            await expect(panel).to_be_hidden()
            await bell.click()
            await panel.get_by_role("link", name="See all").click()
            await expect(page).to_have_url(f"{base}/assistant")
            await expect(page.locator("[data-live-feed] .mb-note").first).to_be_visible()

            # The pages checked below carry what makes them widest: the email's page its
            # chart and its attachment, the Mail tab its 30-day chart.
            await page.goto(f"{base}/mail/{message_id}")
            await expect(page.locator(".mb-activity-chart")).to_be_visible()
            # Its axis is in the viewer's zone, like every other time on the page.
            await expect(page.locator(".mb-activity-chart figcaption")).to_contain_text(
                "times in America/New_York"
            )
            await expect(
                page.get_by_role("region", name="Attachments").get_by_role(
                    "link", name=attachment.name
                )
            ).to_be_visible()
            await page.goto(base + "/mail")
            await expect(page.locator(".mb-rates-chart")).to_be_visible()

            # Every main page: a screenshot at both sizes, and none wider than a phone.
            pages = {
                "compose": "/compose",
                "mail": "/mail",
                "detail": f"/mail/{message_id}",
                "demo-inbox": "/demo-inbox",
                "demo-message": demo_url.removeprefix(base),
                "contacts": "/contacts",
                "assistant": "/assistant",
                "settings-email-sync": "/settings/email-sync",
                "settings-account": "/settings/account",
                "settings-api-tokens": "/settings/api-tokens",
                "settings-webhooks": "/settings/webhooks",
                "settings-privacy": "/settings/privacy",
                "settings-audit": "/settings/audit",
            }
            for name, path in pages.items():
                await page.goto(base + path)
                await page.screenshot(
                    path=str(SCREENSHOTS / f"{name}-1366-{backend}.png"), full_page=True
                )
            await page.set_viewport_size({"width": 390, "height": 844})
            overflowing = {}
            for name, path in pages.items():
                await page.goto(base + path)
                await page.screenshot(
                    path=str(SCREENSHOTS / f"{name}-390-{backend}.png"), full_page=True
                )
                scroll, client = await no_horizontal_overflow(page)
                if scroll > client:
                    overflowing[name] = (scroll, client)
            # The charts' words (tables) opened: still no wider than the phone.
            for name in ("detail", "mail"):
                await page.goto(base + pages[name])
                await page.locator(".mb-chart-words summary").click()
                await expect(page.locator(".mb-chart-words table")).to_be_visible()
                await page.screenshot(
                    path=str(SCREENSHOTS / f"{name}-chart-words-390-{backend}.png"), full_page=True
                )
                scroll, client = await no_horizontal_overflow(page)
                if scroll > client:
                    overflowing[f"{name} (chart in words)"] = (scroll, client)
            # The navigation is whole: every tab is on screen.
            for tab in ("Compose", "Mail", "Contacts", "Demo inbox", "Settings"):
                link = page.get_by_role("navigation", name="Main").get_by_role(
                    "link", name=tab, exact=True
                )
                box = await link.bounding_box()
                assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, tab
            # The Mail tab shows cards: a row is as wide as the screen allows, no wider.
            await page.goto(base + "/mail")
            card = await page.locator(f"#mail-{message_id}").bounding_box()
            assert card is not None and card["width"] <= 390
            # And the sign-in page, once signed out.
            await page.get_by_role("button", name="Sign out").click()
            await expect(page).to_have_url(re.compile(r"/sign-in"))
            await page.screenshot(path=str(SCREENSHOTS / f"sign-in-390-{backend}.png"))
            scroll, client = await no_horizontal_overflow(page)
            if scroll > client:
                overflowing["sign-in"] = (scroll, client)
            assert overflowing == {}, overflowing
        finally:
            await context.close()
            await browser.close()


async def test_the_sign_in_and_first_run_pages_fit_a_phone(
    server: dict[str, Any],  # noqa: F811
) -> None:
    from playwright.async_api import async_playwright, expect

    base = server["base"]
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(viewport={"width": 390, "height": 844})
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            await page.goto(base + "/sign-in")
            await expect(page).to_have_url(f"{base}/create-account")
            await page.screenshot(path=str(SCREENSHOTS / "create-account-390.png"))
            scroll, client = await no_horizontal_overflow(page)
            assert scroll <= client
        finally:
            await context.close()
            await browser.close()
