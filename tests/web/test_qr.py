"""QR codes into the page: a picture the user picks, and the camera.

Both are decoded in the page by the vendored jsQR (src/samizdat/web/static/jsQR.js). The
pictures are real PNG files made here with segno and picked through the browser's file
chooser; the camera is Chromium's fake capture device playing a Y4M video of a QR code
made here too (``--use-file-for-fake-video-capture``), so ``getUserMedia`` and the
decoding loop run for real.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import segno
from playwright.async_api import Page, async_playwright, expect

from tests.e2e.harness import ServerProcess
from tests.web.conftest import CHROMIUM, CHROMIUM_ARGS, Browsing, UiProc, shot
from tests.web.test_messaging import invite_of, say

#: Frame size of the fake camera (Y4M wants even sides).
_WIDTH, _HEIGHT = 640, 480


def qr_png(text: str, path: Path) -> Path:
    segno.make(text, error="M").save(str(path), kind="png", scale=6, border=4)
    return path


def blank_png(path: Path, side: int = 64) -> Path:
    """A white picture with no QR code in it (PNG written by hand: no imaging library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    rows = b"".join(b"\x00" + b"\xff" * side for _ in range(side))
    png = b"\x89PNG\r\n\x1a\n"
    png += chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")
    path.write_bytes(png)
    return path


def qr_y4m(text: str, path: Path) -> Path:
    """A short greyscale Y4M video of ``text``'s QR code, centred, for the fake camera."""
    qr = segno.make(text, error="M")
    modules = int(qr.symbol_size(scale=1, border=4)[0])
    scale = min(_WIDTH, _HEIGHT) // modules
    assert scale >= 2, "the QR code does not fit the fake camera's frame"
    luma = bytearray(b"\xeb" * (_WIDTH * _HEIGHT))  # video white (235)
    left = (_WIDTH - modules * scale) // 2
    top = (_HEIGHT - modules * scale) // 2
    for y, row in enumerate(qr.matrix_iter(scale=scale, border=4)):
        base = (top + y) * _WIDTH + left
        for x, dark in enumerate(row):
            if dark:
                luma[base + x] = 0x10  # video black (16)
    chroma = b"\x80" * (_WIDTH // 2 * _HEIGHT // 2)
    frame = b"FRAME\n" + bytes(luma) + chroma + chroma
    header = f"YUV4MPEG2 W{_WIDTH} H{_HEIGHT} F10:1 Ip A1:1 C420jpeg\n".encode()
    path.write_bytes(header + frame * 4)
    return path


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


async def pick(page: Page, form: str, picture: Path) -> None:
    """Choose ``picture`` through the file chooser the "Pick a QR picture" button opens."""
    async with page.expect_file_chooser() as chooser:
        await page.get_by_role("form", name=form).get_by_text("Pick a QR picture").click()
    await (await chooser.value).set_files(str(picture))


async def test_set_up_and_add_contact_from_qr_pictures_and_camera(
    tmp_path: Path, server: ServerProcess, uis: list[UiProc]
) -> None:
    camera = qr_y4m(server.link, tmp_path / "camera.y4m")
    args = [
        *CHROMIUM_ARGS,
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={camera}",
    ]
    alice_ui, bob_ui = UiProc(tmp_path / "alice"), UiProc(tmp_path / "bob")
    for ui in (alice_ui, bob_ui):
        uis.append(await ui.start())
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=args)
        browsing = Browsing(browser)
        try:
            alice = await browsing.open(alice_ui)
            bob = await browsing.open(bob_ui)

            # Set-up from a picture: first one without a QR code, then the server's.
            await expect(alice.locator("#view-title")).to_have_text("Set up samizdat")
            await pick(alice, "Create your identity", blank_png(tmp_path / "blank.png"))
            await expect(alice.get_by_role("form", name="Create your identity")).to_contain_text(
                "No QR code found in this picture"
            )
            await expect(alice.get_by_label("Server link")).to_have_value("")
            await pick(alice, "Create your identity", qr_png(server.link, tmp_path / "srv.png"))
            await expect(alice.get_by_label("Server link")).to_have_value(server.link)
            await shot(alice, "13-setup-from-qr-picture")
            await alice.get_by_label("Your name").fill("alice")
            await alice.get_by_role("button", name="Create identity").click()
            await expect(alice.get_by_role("button", name="Connected")).to_be_visible()

            # Set-up from the camera: the fake device shows the server's QR code.
            await bob.get_by_role("button", name="Scan with camera: the server").click()
            await expect(bob.get_by_label("Server link")).to_have_value(server.link)
            await expect(
                bob.get_by_role("button", name="Scan with camera: the server")
            ).to_have_text("Scan with camera")  # the camera was let go once the code was read
            await bob.get_by_label("Your name").fill("bob")
            await bob.get_by_role("button", name="Create identity").click()
            await expect(bob.get_by_role("button", name="Connected")).to_be_visible()

            # New contact from a picture of Alice's invite QR code.
            link = await invite_of(alice)
            invite = qr_png(link, tmp_path / "invite.png")
            nav = bob.get_by_role("navigation", name="Sections")
            await nav.get_by_role("button", name="Add contact").click()
            await pick(bob, "Add a contact from their link", invite)
            await expect(bob.get_by_label("Their invite link")).to_have_value(link)
            await shot(bob, "14-add-contact-from-qr-picture")
            await bob.get_by_label("Name for them").fill("alice")
            await bob.get_by_role("button", name="Add contact", exact=True).last.click()
            await expect(bob.locator("#view-title")).to_have_text("alice")
            await say(bob, "hello from a scanned invite")
            await expect(alice.locator("#chat-list")).to_contain_text("hello from a scanned invite")
            browsing.check()
        finally:
            await browsing.close()
            await browser.close()
