"""Privacy in headless Chromium against a real `mailbeacon serve`: the recipient's opt-out
page works with JavaScript off (reading it changes nothing, its button stops tracking),
and compose shows, before sending, which recipients will be tracked."""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
from sqlalchemy import select

from mailbeacon.db import Database
from mailbeacon.models import ConsentRecord, Contact, CopyBody
from tests.web.test_browser_send import (
    CHROMIUM,
    CHROMIUM_ARGS,
    DESKTOP_CHROME,
    PASSWORD,
    SCREENSHOTS,
    cli,
    server,
    sign_in_with_demo_mailbox,
    wait_for,
)

__all__ = ["server"]  # the fixture: `mailbeacon serve` on free ports

pytestmark = [
    pytest.mark.asyncio,
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed at /usr/bin/chromium",
    ),
]

BODY = '<p>Hello Ann,</p><p>here is <a href="https://example.com/pricing">our pricing</a>.</p>'
OPT_OUT = re.compile(r"https?://[^\s\"'<>]+/p/opt-out/[A-Za-z0-9_\-]+")


async def _signed_in_page(browser: Any, base: str) -> Any:
    context = await browser.new_context(
        user_agent=DESKTOP_CHROME, viewport={"width": 1200, "height": 900}
    )
    page = await context.new_page()
    page.set_default_timeout(15_000)
    await sign_in_with_demo_mailbox(page, base)
    return page


def _create_sally(env: dict[str, str]) -> None:
    cli(
        env,
        "user", "create", "--email", "sally@example.com", "--name", "Sally Seller",
        "--org", "Acme", "--password-stdin",
        stdin=PASSWORD + "\n",
    )  # fmt: skip


async def test_the_opt_out_page_works_without_javascript(
    server: dict[str, Any], db_url: str
) -> None:
    from playwright.async_api import async_playwright, expect

    base, env = server["base"], server["env"]
    _create_sally(env)
    database = Database(db_url)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            sender = await _signed_in_page(browser, base)
            csrf = await sender.locator('meta[name="csrf-token"]').get_attribute("content")
            assert csrf
            sent = await sender.request.post(
                f"{base}/api/messages",
                data={"to": ["ann@example.org"], "subject": "Our pricing", "body_html": BODY},
                headers={"x-csrf-token": csrf},
            )
            assert sent.status == 202, await sent.text()
            with database.sessions() as s:
                html = s.scalars(select(CopyBody.html_body)).one() or ""
            link = OPT_OUT.search(html)
            assert link is not None, "the tracked copy has no opt-out footer"

            # The recipient: another browser, JavaScript off, no cookies of ours.
            context = await browser.new_context(
                java_script_enabled=False, user_agent=DESKTOP_CHROME
            )
            page = await context.new_page()
            page.set_default_timeout(15_000)
            await page.goto(link.group(0))
            await expect(page.get_by_role("heading", name="Email tracking by Acme")).to_be_visible()
            await expect(page.get_by_role("heading", name="Your rights")).to_be_visible()
            await page.reload()  # reading it twice changes nothing
            with database.sessions() as s:
                assert s.scalars(select(Contact.consent_state)).one() == "unknown"
            await page.get_by_role("button", name="Stop tracking me").click()
            await expect(page.get_by_text("Tracking is stopped.")).to_be_visible()
            await expect(page.get_by_role("button", name="Stop tracking me")).to_have_count(0)
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-opt-out.png"), full_page=True)
            assert await context.cookies() == []
            with database.sessions() as s:
                assert s.scalars(select(Contact.consent_state)).one() == "withdrawn"
                proof = s.scalars(select(ConsentRecord)).one()
                assert proof.method == "opt_out_page" and proof.network == "127.0.0.0/24"
                assert proof.user_agent == DESKTOP_CHROME
        finally:
            await browser.close()
            database.dispose()


async def test_compose_shows_who_will_be_tracked_before_sending(
    server: dict[str, Any], db_url: str
) -> None:
    from playwright.async_api import async_playwright, expect

    base, env = server["base"], server["env"]
    _create_sally(env)
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await _signed_in_page(browser, base)
            csrf = await page.locator('meta[name="csrf-token"]').get_attribute("content")
            assert csrf
            # Wendy withdrew her consent (recorded by Sally after a phone call).
            r = await page.request.put(
                f"{base}/api/contacts/wendy@example.org/consent",
                data={"state": "withdrawn", "method": "verbal", "note": "on the phone"},
                headers={"x-csrf-token": csrf},
            )
            assert r.status == 200, await r.text()

            await page.goto(base + "/compose")
            await page.get_by_label("To", exact=True).fill(
                "Ann <ann@example.org>, wendy@example.org"
            )
            await page.get_by_label("Bcc", exact=True).fill("sally@example.com")
            to_chips = page.locator('[data-chips-for="to"]')
            ann = to_chips.locator('[data-address="ann@example.org"]')
            wendy = to_chips.locator('[data-address="wendy@example.org"]')
            await expect(ann).to_contain_text("tracked")
            await expect(ann).to_have_class(re.compile("mb-chip-tracked"))
            await expect(wendy).to_contain_text("not tracked: no consent")
            own = page.locator('[data-chips-for="bcc"] [data-address="sally@example.com"]')
            await expect(own).to_contain_text("not tracked: your own address")
            # Switching tracking off for this email changes every chip.
            await page.get_by_label("Enable open tracking").uncheck()
            await page.get_by_label("Enable link tracking").uncheck()
            await expect(ann).to_contain_text("not tracked: switched off")
            await page.get_by_label("Enable open tracking").check()
            await expect(ann).to_have_text(re.compile(r"ann@example\.org\s+tracked$"))
            await page.screenshot(path=str(SCREENSHOTS / "mailbeacon-chips.png"), full_page=True)

            await page.get_by_label("Subject").fill("Our pricing")
            await page.get_by_role("button", name="HTML source").click()
            await page.locator("#body_html").fill(BODY)
            await page.get_by_role("button", name="Send").click()
            await page.wait_for_url(re.compile(r"/mail/\d+"))
            row = page.locator('tr[data-address="wendy@example.org"]')
            await expect(row).to_contain_text("not tracked (no consent)")
            await expect(page.locator('tr[data-address="ann@example.org"]')).to_contain_text(
                "tracked"
            )
        finally:
            await browser.close()


__all__ += ["wait_for"]
