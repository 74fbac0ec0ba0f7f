"""Real ``samizdat ui`` processes driven by Playwright in Debian's Chromium (loopback only).

Never ``playwright install``: the browser is /usr/bin/chromium (scripts/test installs the
Debian package when it is missing). Every request the browser makes to anything but
127.0.0.1 is aborted and recorded, and each test asserts there were none: the page loads
nothing from the internet. Screenshots go to ``test-output/screenshots/`` (gitignored; or
``$SAMIZDAT_SCREENSHOTS``) for a person to look at.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Error,
    Page,
    Route,
    async_playwright,
    expect,
)

from tests.e2e.harness import terminate

PASSPHRASE = "correct horse battery staple"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
SCREENSHOTS = Path(
    os.environ.get("SAMIZDAT_SCREENSHOTS")
    or Path(__file__).resolve().parents[2] / "test-output" / "screenshots"
)
#: Playwright's default 30 s is far longer than anything here should take.
TIMEOUT_MS = 15_000

expect.set_options(timeout=TIMEOUT_MS)


@dataclass
class UiProc:
    """``samizdat [flags] ui --no-browser [ui_flags]`` for one home folder; ``url`` has the
    token. ``passphrase`` None: none in the environment (``--unlock-in-browser``)."""

    home: Path
    flags: tuple[str, ...] = ()
    ui_flags: tuple[str, ...] = ()
    passphrase: str | None = PASSPHRASE
    proc: asyncio.subprocess.Process | None = None
    url: str = ""
    lines: list[str] = field(default_factory=list)

    @property
    def origin(self) -> str:
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def port(self) -> int:
        port = urlsplit(self.url).port
        assert port is not None
        return port

    @property
    def token(self) -> str:
        found = re.search(r"token=([\w-]+)", self.url)
        assert found is not None
        return found.group(1)

    async def start(self) -> UiProc:
        env = dict(os.environ, SAMIZDAT_HOME=str(self.home))
        env.pop("SAMIZDAT_PASSPHRASE", None)
        if self.passphrase is not None:
            env["SAMIZDAT_PASSPHRASE"] = self.passphrase
        log = (self.home.parent / f"{self.home.name}-ui.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "samizdat", *self.flags, "ui", "--no-browser", *self.ui_flags,
            env=env, stdout=asyncio.subprocess.PIPE, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        assert self.proc.stdout is not None
        async with asyncio.timeout(20):
            while not self.url:
                line = (await self.proc.stdout.readline()).decode()
                if not line:
                    raise RuntimeError("samizdat ui exited while starting")
                self.lines.append(line)
                found = re.search(r"(http://127\.0\.0\.1:\d+/\?token=\S+)", line)
                if found:
                    self.url = found.group(1)
        return self

    async def stop(self) -> None:
        await terminate(self.proc)


class Browsing:
    """One Chromium; a fresh context (cookie jar) per person; outside requests refused."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.outside: list[str] = []
        self.contexts: list[BrowserContext] = []
        self.console_errors: list[str] = []

    async def _guard(self, route: Route) -> None:
        host = urlsplit(route.request.url).hostname
        if host == "127.0.0.1" or route.request.url.startswith(("data:", "blob:")):
            await route.continue_()
        else:
            self.outside.append(route.request.url)
            await route.abort()

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(message.text)

    def _page_error(self, error: Error) -> None:
        self.console_errors.append(str(error))

    async def open(self, ui: UiProc, width: int = 1100, height: int = 760) -> Page:
        context = await self.browser.new_context(viewport={"width": width, "height": height})
        self.contexts.append(context)
        await context.route("**/*", self._guard)
        page = await context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        # A CSP violation or a script error is a bug of the page.
        page.on("console", self._console)
        page.on("pageerror", self._page_error)
        await page.goto(ui.url)
        return page

    def check(self) -> None:
        """Nothing from outside was asked for, and no script or CSP error happened."""
        assert self.outside == [], f"the page asked for outside addresses: {self.outside}"
        assert self.console_errors == [], self.console_errors

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def browsing() -> AsyncIterator[Browsing]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        browsing = Browsing(browser)
        try:
            yield browsing
        finally:
            await browsing.close()
            await browser.close()
        assert browsing.outside == [], f"the page asked for outside addresses: {browsing.outside}"


@pytest.fixture
async def uis() -> AsyncIterator[list[UiProc]]:
    started: list[UiProc] = []
    try:
        yield started
    finally:
        for ui in started:
            await ui.stop()


async def shot(page: Page, name: str) -> None:
    """Save a screenshot of the whole page (Playwright creates the folder)."""
    await page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
