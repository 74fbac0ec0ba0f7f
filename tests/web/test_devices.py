"""A second device linked from the page: the existing device shows a code and QR code, the
new device's set-up screen takes the code, both compare the same short code, and the new
device then has the user's chats. Then the old device removes it again."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import expect

from tests.e2e.harness import ServerProcess
from tests.web.conftest import Browsing, UiProc, shot
from tests.web.test_messaging import set_up


async def test_link_a_device_then_remove_it(
    tmp_path: Path, uis: list[UiProc], browsing: Browsing
) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        first_ui, second_ui = UiProc(tmp_path / "laptop"), UiProc(tmp_path / "phone")
        for ui in (first_ui, second_ui):
            uis.append(await ui.start())
        laptop = await browsing.open(first_ui)
        phone = await browsing.open(second_ui, width=390, height=800)
        await set_up(laptop, server.link, "dana")

        await (
            laptop.get_by_role("navigation", name="Sections")
            .get_by_role("button", name="Devices")
            .click()
        )
        await laptop.get_by_role("button", name="Link a new device").click()
        await expect(laptop.get_by_role("img", name="QR code of the link code")).to_be_visible()
        code = await laptop.locator("#link-code").input_value()
        await shot(laptop, "30-device-link-code")

        await phone.get_by_label("Link code from your other device").fill(code)
        await phone.get_by_role("button", name="Link this device").click()
        for page in (laptop, phone):
            await expect(page.get_by_role("dialog")).to_be_visible()
        shown = await laptop.locator("#sas-code").inner_text()
        assert re.fullmatch(r"\d{4} \d{4} \d{4}", shown)
        await expect(phone.locator("#sas-code")).to_have_text(shown)
        await shot(phone, "31-device-link-compare")
        for page in (phone, laptop):
            await page.get_by_role("button", name="They match").click()

        await expect(laptop.locator("#link-out")).to_have_text("The new device is linked.")
        await expect(phone.locator("#view-title")).to_have_text("Chats")
        await (
            laptop.get_by_role("navigation", name="Sections")
            .get_by_role("button", name="Devices")
            .click()
        )
        devices = laptop.get_by_role("list", name="Your devices")
        await expect(devices.get_by_role("listitem")).to_have_count(2)
        await shot(laptop, "32-devices-two")
        await devices.get_by_role("button", name=re.compile("^Remove device")).click()
        await expect(devices.get_by_role("listitem")).to_have_count(1)

        # Delivery receipts: on by default, switched off here, off after a reload.
        delivery = laptop.get_by_label(re.compile("^Send delivery receipts"))
        await expect(delivery).to_be_checked()
        await delivery.uncheck()
        await expect(laptop.locator("#announcer")).to_contain_text("Delivery receipts off.")
        await laptop.reload()
        await (
            laptop.get_by_role("navigation", name="Sections")
            .get_by_role("button", name="Devices")
            .click()
        )
        await expect(laptop.get_by_label(re.compile("^Send delivery receipts"))).not_to_be_checked()
        browsing.check()
    finally:
        server.stop()
