"""Replies, reactions, edits, deletions, receipts and timers between two users (issue 6).

Real server process, real clients; alice has a second (linked) device, so everything
also has to reach the sender's own other device.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from samizdat.client import actions, devices, msgstate, timers
from samizdat.client.actions import MessageView
from samizdat.client.app import Client
from samizdat.client.store import STORE_FILE
from samizdat.errors import LocalError
from samizdat.protocol.actions import MessageAction
from tests.e2e.harness import PASSPHRASE, ServerProcess, scan_for
from tests.groups.helpers import befriend, drain, link, new_user


@dataclass
class Pair:
    alice: Client
    laptop: Client
    bob: Client
    homes: dict[str, Path]

    @property
    def all(self) -> dict[str, Client]:
        return {"alice": self.alice, "laptop": self.laptop, "bob": self.bob}


@pytest.fixture
async def pair(tmp_path: Path, server: ServerProcess) -> AsyncIterator[Pair]:
    alice = await new_user(tmp_path, "alice", server.link)
    bob = await new_user(tmp_path, "bob", server.link)
    clients = [alice, bob]
    try:
        await befriend(alice, bob)
        laptop, _, _ = await link(alice, tmp_path / "alice-laptop")
        clients.append(laptop)
        for client in clients:
            await drain(client, idle=0.5)
        homes = {"alice": tmp_path / "alice", "laptop": tmp_path / "alice-laptop"}
        yield Pair(alice, laptop, bob, homes | {"bob": tmp_path / "bob"})
    finally:
        for client in clients:
            await client.close()


async def _drain_all(pair: Pair, rounds: int = 2) -> None:
    for _ in range(rounds):
        for client in pair.all.values():
            await drain(client, idle=0.5)


def _view(client: Client, peer: str, msg_id: str) -> MessageView:
    found = [v for v in actions.conversation(client, peer) if v.id == msg_id]
    assert len(found) == 1, msg_id
    return found[0]


async def test_reply_react_edit_delete_on_every_device(pair: Pair) -> None:
    original = await pair.alice.send("bob", "original text")
    await drain(pair.bob)
    reply = await actions.reply(pair.bob, "alice", original, "a reply")
    await actions.react(pair.bob, "alice", original, "👍")
    await actions.react(pair.bob, "alice", original, "❤")  # replaces bob's first reaction
    await actions.edit(pair.alice, "bob", original, "edited text")
    oops = await pair.alice.send("bob", "sent by mistake")
    await actions.delete(pair.alice, "bob", oops)
    await _drain_all(pair)
    peers = {"alice": "bob", "laptop": "bob", "bob": "alice"}
    for device, client in pair.all.items():
        peer = peers[device]
        first = _view(client, peer, original)
        assert (first.text, first.edited, first.deleted) == ("edited text", True, False), device
        assert list(first.reactions.values()) == ["❤"], device
        # The author's devices keep the earlier text; the receiver only the newest.
        assert first.edits == (["original text"] if device != "bob" else []), device
        answer = _view(client, peer, reply)
        assert (answer.text, answer.reply_to) == ("a reply", original), device
        gone = _view(client, peer, oops)
        assert (gone.deleted, gone.text) == (True, ""), device
    # Only the author may edit or delete.
    with pytest.raises(LocalError):
        await actions.edit(pair.bob, "alice", original, "not yours")
    with pytest.raises(LocalError):
        await actions.delete(pair.bob, "alice", original)
    # A client that skips that check is ignored by every receiver.
    conv = msgstate.contact_conv(pair.bob._contact_by_name("alice").cid)
    target = bytes.fromhex(original)
    await actions.send_change(pair.bob, conv, MessageAction(delete=target))
    await actions.send_change(pair.bob, conv, MessageAction(edit=target), "forged")
    # Removing a reaction reaches everyone too.
    await actions.react(pair.bob, "alice", original, "")
    await _drain_all(pair)
    for device, client in pair.all.items():
        first = _view(client, peers[device], original)
        assert (first.reactions, first.text, first.deleted) == ({}, "edited text", False), device


async def test_delivery_and_read_receipts_and_switching_them_off(pair: Pair) -> None:
    assert await actions.mark_read(pair.bob, "alice") == 1  # "hi bob", from befriending
    await drain(pair.alice)
    first = await pair.alice.send("bob", "are you there?")
    await drain(pair.bob)  # stores it, then sends a delivery receipt
    await drain(pair.alice)
    view = _view(pair.alice, "bob", first)
    assert view.delivered_to == ["bob"] and view.read_by == []
    assert await actions.mark_read(pair.bob, "alice") == 1
    await drain(pair.alice)
    await drain(pair.laptop)
    for client in (pair.alice, pair.laptop):
        assert _view(client, "bob", first).read_by == ["bob"]
    # Bob switches read receipts off: none is sent, and he sees none of alice's.
    actions.set_read_receipts(pair.bob, False)
    second = await pair.alice.send("bob", "and now?")
    await drain(pair.bob)
    assert await actions.mark_read(pair.bob, "alice") == 1
    await drain(pair.alice)
    view = _view(pair.alice, "bob", second)
    assert view.delivered_to == ["bob"] and view.read_by == []
    back = await pair.bob.send("alice", "reading quietly")
    await drain(pair.alice)
    await actions.mark_read(pair.alice, "bob")
    await drain(pair.bob)
    assert _view(pair.bob, "alice", back).read_by == []
    actions.set_read_receipts(pair.bob, True)
    assert _view(pair.bob, "alice", back).read_by == ["alice"]


def _log_values(home: Path) -> set[bytes]:
    with contextlib.closing(sqlite3.connect(home / STORE_FILE)) as db:
        return {bytes(v) for (v,) in db.execute("SELECT value FROM log")}


def _timed_entries(server: ServerProcess) -> list[bytes]:
    bodies: list[bytes] = []
    with contextlib.closing(sqlite3.connect(server.data_dir / "server.db")) as db:
        # Within the next minute: the test's 5-second timer, not a receipt's week.
        rows = db.execute(
            "SELECT body FROM mailbox_entries WHERE expires_at < ?",
            (int(time.time() * 1000) + 60_000,),
        )
        bodies.extend(bytes(b) for (b,) in rows)
    return bodies


async def test_a_five_second_timer_deletes_everywhere(
    pair: Pair, server: ServerProcess, tmp_path: Path
) -> None:
    await timers.set_timer(pair.alice, "bob", 5)
    await _drain_all(pair, rounds=1)
    # Set by one side, shown on both (and on alice's other device).
    assert [timers.timer(c, p) for c, p in ((pair.bob, "alice"), (pair.laptop, "bob"))] == [5, 5]
    before = {name: _log_values(home) for name, home in pair.homes.items()}
    kept = await pair.alice.send("bob", "not timed? no: every message here is timed")
    timed = await pair.alice.send("bob", "MARKER-disappearing")
    await drain(pair.bob)
    # alice's laptop has not fetched yet: its copy waits on the server, with an expiry.
    bodies = _timed_entries(server)
    assert bodies, "the server holds the laptop's timed entries"
    assert {v.id for v in actions.conversation(pair.bob, "alice")} >= {kept, timed}
    added = {name: _log_values(home) - before[name] for name, home in pair.homes.items()}
    assert added["alice"] and added["bob"]
    expires_at = _view(pair.bob, "alice", timed).expires_at
    assert expires_at is not None
    # A device linked now would not get the timed messages (they would outlive the timer).
    synced = {h.msg_id.hex() for item in devices._sync_items(pair.alice) for h in item.history}
    assert not synced & {kept, timed} and synced
    await asyncio.sleep(max(0.0, expires_at / 1000 - time.time()) + 2.0)
    for client in pair.all.values():
        timers.sweep(client)
    await drain(pair.laptop)
    for device, client in pair.all.items():
        peer = "alice" if device == "bob" else "bob"
        ids = {v.id for v in actions.conversation(client, peer)}
        assert not ids & {kept, timed}, device
    # No copy left on disk: the rows' ciphertexts are gone from the store file and WAL...
    for name, home in pair.homes.items():
        needles = [v[:48] for v in added[name]]
        assert scan_for(home, needles) == [], name
    # ...and from the server's data directory (database, WAL, free pages).
    assert scan_for(server.data_dir, [b[-64:] for b in bodies]) == []
    # Never shown again after a restart.
    await pair.bob.close()
    pair.bob = await Client.open(pair.homes["bob"], PASSPHRASE)
    assert not {v.id for v in actions.conversation(pair.bob, "alice")} & {kept, timed}
    assert [h.id for h in pair.bob.history("alice")].count(timed) == 0
