"""Must show: two (then three) people, each with their own `samizdat ui` process, against a
local server, in real Chromium: set-up, invite by link, a conversation both ways with live
updates, a group of three. Screenshots of the main screens go to test-output/screenshots/."""

from __future__ import annotations

import re
from pathlib import Path

from playwright.async_api import Page, expect

from tests.e2e.harness import ServerProcess
from tests.web.conftest import Browsing, UiProc, shot


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _read(path: Path) -> bytes:
    return path.read_bytes()


async def set_up(page: Page, server_link: str, name: str) -> None:
    await expect(page.locator("#view-title")).to_have_text("Set up samizdat")
    await page.get_by_label("Server link").fill(server_link)
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Create identity").click()
    await expect(page.locator("#view-title")).to_have_text("Chats")
    await expect(page.get_by_role("button", name="Connected")).to_be_visible()


async def invite_of(page: Page) -> str:
    await (
        page.get_by_role("navigation", name="Sections")
        .get_by_role("button", name="Add contact")
        .click()
    )
    await page.get_by_role("button", name="Show my invite").click()
    await expect(page.get_by_role("img", name="QR code of your invite link")).to_be_visible()
    link = await page.locator("#invite-link").input_value()
    assert link.startswith("samizdat:invite/")
    return link


async def add_contact(page: Page, link: str, name: str) -> None:
    await (
        page.get_by_role("navigation", name="Sections")
        .get_by_role("button", name="Add contact")
        .click()
    )
    await page.get_by_label("Their invite link").fill(link)
    await page.get_by_label("Name for them").fill(name)
    await page.get_by_role("button", name="Add contact", exact=True).last.click()
    await expect(page.locator("#view-title")).to_have_text(name)


async def say(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    await box.fill(text)
    await box.press("Enter")
    await expect(page.locator("#messages .msg.out").last).to_contain_text(text)


def chat_button(page: Page, name: str) -> object:
    return page.locator("#chat-list").get_by_role("button", name=re.compile(rf"^{name}\b"))


async def open_chat(page: Page, name: str) -> None:
    await page.locator("#chat-list").get_by_role("button", name=re.compile(rf"^{name}\b")).click()
    await expect(page.locator("#view-title")).to_have_text(name)


async def test_two_people_then_a_group_of_three(
    tmp_path: Path, uis: list[UiProc], browsing: Browsing
) -> None:
    server = ServerProcess(tmp_path / "server")
    server.start()
    try:
        alice_ui, bob_ui, carol_ui = (UiProc(tmp_path / n) for n in ("alice", "bob", "carol"))
        for ui in (alice_ui, bob_ui, carol_ui):
            uis.append(await ui.start())
        alice = await browsing.open(alice_ui)
        bob = await browsing.open(bob_ui)
        # The token left the address bar: the page is at / with a cookie.
        assert alice.url == f"{alice_ui.origin}/"
        # Landmarks a screen reader jumps between.
        await expect(alice.get_by_role("banner")).to_be_visible()
        await expect(alice.get_by_role("main")).to_be_visible()
        await shot(alice, "01-setup")
        await set_up(alice, server.link, "alice")
        await set_up(bob, server.link, "bob")

        link = await invite_of(alice)
        await shot(alice, "02-invite-qr")
        await add_contact(bob, link, "alice")
        await say(bob, "hello alice, it is bob")

        # Alice's page updates by itself: a request with one unread message, announced.
        request = alice.locator("#chat-list").get_by_role(
            "button", name=re.compile(r"^bob \(request\), 1 unread")
        )
        await expect(request).to_be_visible()
        await expect(alice.locator("#announcer")).to_contain_text(
            "New message from bob: hello alice, it is bob"
        )
        await shot(alice, "03-chat-list-unread")
        await request.click()
        await expect(alice.locator("#messages .msg.in")).to_have_text(
            [re.compile("hello alice, it is bob")]
        )
        await alice.get_by_role("button", name="Accept").click()
        await expect(alice.get_by_role("button", name="Accept")).to_have_count(0)
        # Opening the chat marked it read.
        await expect(
            alice.locator("#chat-list").get_by_role("button", name=re.compile("unread"))
        ).to_have_count(0)
        await say(alice, "hi bob, alice here")
        # Bob has the conversation open: the answer appears without any action of his.
        await expect(bob.locator("#messages .msg.in").last).to_contain_text("hi bob, alice here")
        # Arriving in the open chat, it is read at once: no unread count for it.
        await expect(bob.locator("#chat-list .unread")).to_have_count(0)
        await say(bob, "and one more")
        await expect(alice.locator("#messages .msg.in").last).to_contain_text("and one more")
        await shot(alice, "04-conversation")

        # Replies, reactions, edits and deletions: each shows on the other side by itself.
        await bob.get_by_role("button", name="Reply to alice: hi bob, alice here").click()
        await expect(bob.locator("#compose-mode")).to_contain_text("Replying to alice")
        await say(bob, "this is a reply")
        answer = alice.locator("#messages .msg.in").last
        await expect(answer).to_contain_text("this is a reply")
        await expect(answer.locator(".quote")).to_have_text("you: hi bob, alice here")
        await alice.get_by_role("button", name="React with thumbs up to: this is a reply").click()
        await expect(bob.locator("#messages .msg.out").last.locator(".reactions")).to_have_text(
            "👍 alice"
        )
        await bob.get_by_role("button", name="Edit: and one more").click()
        await bob.get_by_label("Message", exact=True).fill("and one more, edited")
        await bob.get_by_label("Message", exact=True).press("Enter")
        edited = alice.locator("#messages .msg.in", has_text="and one more, edited")
        await expect(edited.locator(".meta")).to_contain_text("edited")
        bob.on("dialog", lambda dialog: dialog.accept())
        await bob.get_by_role("button", name="Delete for everyone: hello alice, it is bob").click()
        await expect(alice.locator("#messages .msg.in").first).to_contain_text(
            "This message was deleted."
        )
        await expect(alice.locator("#messages")).not_to_contain_text("hello alice, it is bob")

        # A file, with its upload progress, sent by Bob and opened by Alice.
        note = tmp_path / "note.txt"
        _write(note, b"samizdat file \x00\x01 " * 5000)
        await bob.locator("#file-input").set_input_files(str(note))
        file_link = alice.get_by_role("link", name="note.txt")
        await expect(file_link).to_be_visible()
        await expect(file_link).to_contain_text("(83.0 KiB)")
        # The progress bar followed the encrypted upload to the end.
        bar = bob.get_by_role("progressbar", name="Sending note.txt")
        await expect(bar).to_have_js_property("position", 1)
        await expect(bob.locator("#transfers")).to_contain_text("Sent note.txt")
        async with alice.expect_download() as info:
            await file_link.click()
        download = await info.value
        assert download.suggested_filename == "note.txt"
        opened = await download.path()
        assert _read(Path(opened)) == _read(note)
        await shot(alice, "04b-reply-reaction-edit-delete-file")

        # A disappearing-message timer set by Alice applies on Bob's side too.
        await alice.get_by_label("Disappearing messages").select_option("3600")
        await expect(bob.get_by_label("Disappearing messages")).to_have_value("3600")
        await say(bob, "this one disappears")
        timed = alice.locator("#messages .msg.in", has_text="this one disappears")
        await expect(timed.locator(".meta")).to_contain_text("disappears at")

        await alice.get_by_role("button", name="Safety number").click()
        await expect(alice.locator("#view-title")).to_have_text("Safety number with bob")
        await open_chat(bob, "alice")
        await bob.get_by_role("button", name="Safety number").click()
        digits = await alice.locator("#safety-digits").inner_text()
        assert len(re.sub(r"\D", "", digits)) == 60
        await expect(bob.locator("#safety-digits")).to_have_text(digits)
        await alice.get_by_role("button", name="Mark as verified").click()
        await expect(alice.locator("#verify-status")).to_have_text("bob is verified.")
        await shot(alice, "05-safety-number")
        # Interactive verification: both start it, both see the same code, both confirm.
        for page in (alice, bob):
            await page.get_by_role("button", name="Compare emoji together").click()
        for page in (alice, bob):
            await expect(page.get_by_role("dialog")).to_be_visible()
        code = await alice.locator("#sas-code").inner_text()
        assert re.fullmatch(r"\d{4} \d{4} \d{4}", code)
        await expect(bob.locator("#sas-code")).to_have_text(code)
        await shot(bob, "05b-sas-compare")
        for page in (alice, bob):
            await page.get_by_role("button", name="They match").click()
        await expect(alice.locator("#verify-status")).to_have_text("bob is verified.")
        await expect(bob.locator("#verify-status")).to_have_text("alice is verified.")

        # Carol joins; Alice makes a group of the three of them.
        carol = await browsing.open(carol_ui)
        await set_up(carol, server.link, "carol")
        await add_contact(carol, await invite_of(alice), "alice")
        await say(carol, "hello from carol")
        await open_chat(alice, "carol")
        await alice.get_by_role("button", name="Accept").click()
        await expect(alice.get_by_role("button", name="Accept")).to_have_count(0)

        nav = alice.get_by_role("navigation", name="Sections")
        await nav.get_by_role("button", name="New group").click()
        await alice.get_by_label("Group name").fill("friends")
        await alice.get_by_role("checkbox", name="bob").check()
        await alice.get_by_role("checkbox", name="carol").check()
        await shot(alice, "06-new-group")
        await alice.get_by_role("button", name="Create group").click()
        await expect(alice.locator("#view-title")).to_have_text("friends")
        await expect(alice.get_by_role("complementary", name="Chats")).to_be_visible()
        await expect(alice.get_by_role("navigation", name="Sections")).to_be_visible()
        await say(alice, "welcome to friends")
        for page in (bob, carol):
            await open_chat(page, "friends")
            await expect(page.locator("#messages .msg.in").last).to_contain_text(
                "welcome to friends"
            )
        await say(bob, "bob in the group")
        for page in (alice, carol):
            await expect(page.locator("#messages .msg.in").last).to_contain_text("bob in the group")
        await expect(carol.locator("#messages .msg.in").last).to_contain_text("bob")
        # A file in the group: sent by Bob, opened by Carol with the very same bytes.
        plan = tmp_path / "plan.bin"
        _write(plan, bytes(range(256)) * 300)
        await bob.locator("#file-input").set_input_files(str(plan))
        await expect(bob.locator("#transfers")).to_contain_text("Sent plan.bin")
        group_file = carol.get_by_role("link", name="plan.bin")
        await expect(group_file).to_contain_text("(75.0 KiB)")
        await expect(alice.get_by_role("link", name="plan.bin")).to_be_visible()
        async with carol.expect_download() as group_info:
            await group_file.click()
        group_download = await group_info.value
        assert group_download.suggested_filename == "plan.bin"
        assert _read(Path(await group_download.path())) == _read(plan)
        await shot(carol, "07-group")
        await alice.get_by_role("button", name="Members").click()
        members = alice.get_by_role("list", name="Members")
        await expect(members.get_by_role("listitem")).to_have_count(3)
        await expect(members).to_contain_text("alice (you) — admin")
        await shot(alice, "08-group-members")

        await nav.get_by_role("button", name="Devices").click()
        await expect(alice.get_by_role("list", name="Your devices")).to_contain_text(
            "(this device)"
        )
        await expect(alice.get_by_label("Send read receipts")).to_be_checked()
        await shot(alice, "09-devices")
        await nav.get_by_role("button", name="Connection").click()
        await expect(alice.locator("#conn-sentence")).to_contain_text("Connected over WebSocket")
        await shot(alice, "10-connection")

        # A narrow window, as on a phone: one column, the list first, then the chat.
        phone = await browsing.open(bob_ui, width=380, height=740)
        await expect(phone.locator("#chat-list")).to_be_visible()
        await expect(phone.locator("#main")).to_be_hidden()
        await shot(phone, "11-narrow-list")
        await open_chat(phone, "alice")
        await expect(phone.locator("#chat-list")).to_be_hidden()
        await expect(phone.get_by_role("button", name="Back to chats")).to_be_visible()
        await shot(phone, "12-narrow-chat")
        browsing.check()
    finally:
        server.stop()
