"""An attachment's round trip in headless Chromium, against a real `mailbeacon serve`:
choose a file in compose (its size shown, an empty one caught before posting), be
asked before sending without a subject, send through the demo mailbox, find the file
listed on the email's page, and save it from the recipient's copy in the Demo inbox
with every octet intact."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.web.test_browser_send import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP_CHROME,
    PASSWORD,
    cli,
    server,
    sign_in_with_demo_mailbox,
)

__all__ = ["server"]  # the fixture, used by name

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed at /usr/bin/chromium",
    ),
]


async def test_a_file_chosen_in_compose_reaches_the_demo_inbox_intact(
    server: dict[str, Any], tmp_path: Path
) -> None:
    from playwright.async_api import async_playwright, expect

    base, env = server["base"], server["env"]
    cli(
        env,
        "user",
        "create",
        "--email",
        "sally@example.com",
        "--name",
        "Sally Seller",
        "--org",
        "Acme",
        "--password-stdin",
        stdin=PASSWORD + "\n",
    )
    proposal = tmp_path / "Angebot für Müller.pdf"
    octets = b"%PDF-1.4\n" + os.urandom(250_000)
    proposal.write_bytes(octets)
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        context = await browser.new_context(
            user_agent=DESKTOP_CHROME,
            viewport={"width": 1200, "height": 900},
            accept_downloads=True,
        )
        page = await context.new_page()
        page.set_default_timeout(15_000)
        try:
            await sign_in_with_demo_mailbox(page, base)

            await page.goto(base + "/compose")
            await page.get_by_label("To", exact=True).fill("ann@example.org")
            await page.get_by_role("radio", name="Plain text").check()
            await page.get_by_label("Message (plain text)").fill("The proposal is attached.")
            files = page.get_by_label("Attachments")
            await expect(page.get_by_text("Up to 20 MB of files together")).to_be_visible()

            # An empty file is caught before sending, and the files stay chosen.
            await files.set_input_files([str(proposal), str(empty)])
            await page.get_by_role("button", name="Send").click()
            await expect(page.get_by_role("alert")).to_contain_text(
                "“empty.txt” is empty (0 bytes)"
            )
            assert page.url == base + "/compose"

            await files.set_input_files([str(proposal)])
            listed = page.locator("#attachment-list")
            await expect(listed).to_contain_text("Angebot für Müller.pdf · 251 KB")

            # No subject: a dialog asks before anything is posted.
            await page.get_by_role("button", name="Send").click()
            dialog = page.get_by_role("dialog")
            await expect(dialog).to_contain_text("This email has no subject. Send it anyway?")
            await expect(dialog.get_by_role("button", name="Keep editing")).to_be_focused()
            await dialog.get_by_role("button", name="Keep editing").click()
            await expect(dialog).to_be_hidden()
            await expect(page.get_by_role("textbox", name="Subject")).to_be_focused()
            assert page.url == base + "/compose"
            await page.get_by_role("textbox", name="Subject").fill("Our proposal")
            await page.get_by_role("button", name="Send").click()
            await expect(page.get_by_text("being sent in the background")).to_be_visible()
            message_id = int(page.url.split("/mail/")[1].split("?")[0])

            deadline = time.monotonic() + 30
            while True:
                r = await page.request.get(f"{base}/api/mail/{message_id}")
                if all(x["status"] == "sent" for x in (await r.json())["recipients"]):
                    break
                assert time.monotonic() < deadline, "the copy was not delivered"
                await page.wait_for_timeout(250)

            await page.goto(f"{base}/mail/{message_id}")
            section = page.get_by_role("region", name="Attachments")
            await expect(section.get_by_role("link", name="Angebot für Müller.pdf")).to_be_visible()
            await expect(section).to_contain_text("251 KB · application/pdf")

            await page.get_by_role("link", name="Demo inbox").click()
            await (
                page.get_by_role("region", name="ann@example.org")
                .get_by_role("link", name="Our proposal")
                .click()
            )
            link = page.get_by_role("list", name="Attachments").get_by_role(
                "link", name="Angebot für Müller.pdf"
            )
            async with page.expect_download() as waiting:
                await link.click()
            download = await waiting.value
            assert download.suggested_filename == "Angebot für Müller.pdf"
            saved = tmp_path / "saved.pdf"
            await download.save_as(saved)
            assert saved.read_bytes() == octets

            # "Send anyway" sends it as it is.
            await page.goto(base + "/compose")
            await page.get_by_label("To", exact=True).fill("bob@example.com")
            await page.get_by_role("textbox", name="Message", exact=True).fill("No subject.")
            await page.get_by_role("button", name="Send").click()
            await page.get_by_role("dialog").get_by_role("button", name="Send anyway").click()
            await expect(page.get_by_text("being sent in the background")).to_be_visible()
        finally:
            await context.close()
            await browser.close()
