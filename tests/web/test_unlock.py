"""``samizdat ui --unlock-in-browser``: no passphrase on the terminal or in the environment;
the page asks for it (chosen twice in a new home, then to unlock it on every start)."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import Page, expect

from tests.e2e.harness import ServerProcess
from tests.web.conftest import PASSPHRASE, Browsing, UiProc, shot
from tests.web.test_messaging import set_up


async def unlock(page: Page, secret: str) -> None:
    await expect(page.locator("#view-title")).to_have_text("Unlock samizdat")
    await page.get_by_label("Passphrase", exact=True).fill(secret)
    await page.get_by_role("button", name="Unlock", exact=True).click()


async def test_passphrase_chosen_then_asked_in_the_page(
    tmp_path: Path, uis: list[UiProc], browsing: Browsing
) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        home = tmp_path / "alice"
        first = UiProc(home, ui_flags=("--unlock-in-browser",), passphrase=None)
        uis.append(await first.start())
        page = await browsing.open(first)
        # A new home: choose the passphrase, twice; two different ones are refused.
        await expect(page.locator("#view-title")).to_have_text("Choose a passphrase")
        # Nothing but the unlock screen is reachable yet.
        await expect(page.get_by_role("navigation", name="Sections")).to_be_hidden()
        await page.get_by_label("Choose a passphrase").fill(PASSPHRASE)
        await page.get_by_label("The same passphrase again").fill(PASSPHRASE + "!")
        await page.get_by_role("button", name="Continue").click()
        await expect(page.get_by_role("form", name="Choose your passphrase")).to_contain_text(
            "The two passphrases differ."
        )
        await page.get_by_label("Choose a passphrase").fill(PASSPHRASE)
        await page.get_by_label("The same passphrase again").fill(PASSPHRASE)
        await shot(page, "15-choose-passphrase")
        await page.get_by_role("button", name="Continue").click()
        await set_up(page, server.link, "alice")
        await page.close()  # before its server goes: no reconnecting event stream
        await first.stop()

        # Started again: the page asks for the passphrase; a wrong one opens nothing.
        again = UiProc(home, ui_flags=("--unlock-in-browser",), passphrase=None)
        uis.append(await again.start())
        page = await browsing.open(again)
        await unlock(page, "not the passphrase")
        form = page.get_by_role("form", name="Unlock")
        await expect(form.get_by_role("alert")).not_to_be_empty()
        await expect(page.locator("#view-title")).to_have_text("Unlock samizdat")
        await expect(page.get_by_label("Passphrase", exact=True)).to_have_value("")
        # The refusal is a 400 answer, which Chromium logs; it is the only error expected.
        refused = [e for e in browsing.console_errors if "status of 400" in e]
        assert len(refused) == 1, browsing.console_errors
        browsing.console_errors.remove(refused[0])
        await shot(page, "16-unlock")
        await unlock(page, PASSPHRASE)
        await expect(page.locator("#view-title")).to_have_text("Chats")
        await expect(page.get_by_role("button", name="Connected")).to_be_visible()
        browsing.check()
    finally:
        server.stop()
