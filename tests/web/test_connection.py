"""Must show: the connection panel explains a simulated DNS block in plain words and
recovers when the user adds a relay link.

The server is known only by a name (``--public-host``) that our fake resolver first
answers and then blocks (NXDOMAIN), with DNS-over-HTTPS off; a samizdat relay on another
loopback address reaches the server at its real address (tests/relay).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import expect

from tests.censorship.conftest import NAME, PASSPHRASE, World
from tests.censorship.net import free_port, run_cli
from tests.relay.conftest import start_relay, upstream
from tests.web.conftest import Browsing, UiProc, shot


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.close()


async def test_dns_block_explained_then_relay_link_recovers(
    world: World, uis: list[UiProc], browsing: Browsing
) -> None:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    dns = await world.dns({NAME: "127.0.0.2"})
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", port),
    )  # fmt: skip
    flags = ("--dns-server", dns.address, "--doh", "none")
    home = world.tmp / "alice"
    code, _, err = await run_cli(
        home, *flags, "init", "--server", server.link, "--name", "alice", passphrase=PASSPHRASE
    )
    assert code == 0, err
    dns.answers[NAME] = None  # the censor starts lying about the server's name

    ui = await UiProc(home, flags).start()
    uis.append(ui)
    page = await browsing.open(ui)
    badge = page.get_by_role("button", name="Not connected")
    await expect(badge).to_be_visible()
    await badge.click()
    await expect(page.locator("#view-title")).to_have_text("Connection")
    await expect(page.locator("#conn-sentence")).to_have_text("Cannot reach your server.")
    await expect(page.locator("#findings")).to_contain_text(
        f"{NAME} does not resolve here (NXDOMAIN)"
    )
    advice = page.locator("#advice")
    await expect(advice).to_contain_text("Your network hides the server's name (DNS)")
    await expect(advice).to_contain_text("Add a relay link")
    await shot(page, "20-connection-dns-blocked")

    await page.get_by_role("textbox", name="Relay link").fill(relay.link_text)
    await page.get_by_role("button", name="Add relay").click()
    await expect(page.get_by_role("button", name="Connected")).to_be_visible()
    await expect(page.locator("#conn-sentence")).to_contain_text("through the samizdat relay")
    await expect(page.locator("#findings")).to_have_count(0)
    await shot(page, "21-connection-through-relay")
    assert (await relay.stats())["upstream_connections"] >= 1
    await (
        page.get_by_role("navigation", name="Sections").get_by_role("button", name="Relays").click()
    )
    await expect(page.get_by_role("list", name="Your relays")).to_contain_text("127.0.0.9")
    await shot(page, "22-relays")
    browsing.check()
