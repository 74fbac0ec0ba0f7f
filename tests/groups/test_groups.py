"""Group chats against a real server process (issue 5, "Must show")."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import sqlite3
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from samizdat.client import devices, groups
from samizdat.client.app import Client
from samizdat.crypto.megolm import MegolmInbound
from samizdat.crypto.padding import unpad
from samizdat.errors import DecryptionError, LocalError, ServerRefused
from samizdat.protocol.control import decode_group_box, decode_group_text
from samizdat.protocol.groups import decode_group_state
from tests.e2e.harness import PASSPHRASE, ServerProcess, scan_for
from tests.groups.helpers import befriend, drain, link, new_user


@dataclass
class Team:
    users: dict[str, Client]
    #: Every device: the users' first devices and two linked laptops.
    devices: dict[str, Client]


@pytest.fixture
async def team(tmp_path: Path, server: ServerProcess) -> AsyncIterator[Team]:
    """Five users; ann and bea also have a laptop; ann is friends with everyone."""
    users = {
        n: await new_user(tmp_path, n, server.link) for n in ("ann", "bea", "cid", "dan", "eve")
    }
    devices = dict(users)
    try:
        for other in ("bea", "cid", "dan", "eve"):
            await befriend(users["ann"], users[other])
        for owner in ("ann", "bea"):
            laptop, _, _ = await link(users[owner], tmp_path / f"{owner}-laptop")
            devices[f"{owner}-laptop"] = laptop
        await asyncio.gather(*(drain(client, idle=0.5) for client in devices.values()))
        yield Team(users, devices)
    finally:
        for client in devices.values():
            await client.close()


async def _drain_all(team: Team) -> dict[str, list[tuple[str | None, str, str]]]:
    # All devices at once: each drain waits out its own idle second.
    drained = await asyncio.gather(*(drain(c, idle=1.0) for c in team.devices.values()))
    return {
        name: [(m.group, m.sender, m.text) for m in got]
        for name, got in zip(team.devices, drained, strict=True)
    }


async def test_every_device_gets_each_message_once_in_order(team: Team) -> None:
    ann = team.users["ann"]
    name = await groups.create(ann, "plotters", ["bea", "cid", "dan", "eve"])
    await _drain_all(team)
    for client in team.devices.values():
        assert [g.name for g in groups.list_groups(client)] == ["plotters"]
        assert len(groups.members(client, "plotters")) == 5
    texts = [f"ann says {i}" for i in range(5)]
    for text in texts:
        await groups.send(ann, name, text)
    await groups.send(team.users["eve"], "plotters", "eve answers")
    got = await _drain_all(team)
    for device, messages in got.items():
        expected = texts + ["eve answers"]
        if device.startswith("ann"):
            expected = [t for t in expected if not t.startswith("ann")]
        if device == "eve":
            expected = texts
        assert [m[2] for m in messages] == expected, device
        assert all(m[0] == "plotters" for m in messages)
    # The sender's other device shows what was sent, as its own, in order.
    laptop_history = groups.history(team.devices["ann-laptop"], "plotters")
    assert [(h.direction, h.text) for h in laptop_history] == [
        *(("out", t) for t in texts),
        ("in", "eve answers"),
    ]
    for client in team.devices.values():
        assert [h.text for h in groups.history(client, "plotters")] == texts + ["eve answers"]
    # bea revokes her laptop: the next message uses a new session it never gets.
    laptop = team.devices.pop("bea-laptop")
    await devices.revoke(team.users["bea"], laptop._identity.device_id.hex())
    await _drain_all(team)
    after = await groups.send(ann, name, "not for the revoked laptop")
    assert after.rotated and after.devices == 5  # ann-laptop, bea, cid, dan, eve
    got = await _drain_all(team)
    assert got["bea"] == [("plotters", "ann", "not for the revoked laptop")]
    try:
        late = await drain(laptop)
    except ServerRefused as exc:
        assert exc.code == "unknown_device"
    else:
        assert late == []
    with pytest.raises(DecryptionError):
        _try_open(laptop, after.body)
    await laptop.close()


async def test_new_member_reads_nothing_earlier_removed_member_nothing_later(
    team: Team, tmp_path: Path
) -> None:
    ann = team.users["ann"]
    await groups.create(ann, "club", ["bea", "cid", "dan"])
    await _drain_all(team)
    before = await groups.send(ann, "club", "before eve")
    await _drain_all(team)
    await groups.add(ann, "club", ["eve"])
    await _drain_all(team)
    with_eve = await groups.send(ann, "club", "with eve")
    assert not with_eve.rotated  # an addition shares the current index, no rotation
    got = await _drain_all(team)
    assert [m[2] for m in got["eve"]] == ["with eve"]
    assert [h.text for h in groups.history(team.users["eve"], "club")] == ["with eve"]
    assert _try_open(team.users["eve"], with_eve.body) == "with eve"
    with pytest.raises(DecryptionError):
        _try_open(team.users["eve"], before.body)
    # Keep a copy of dan's whole client state as it was while a member.
    await team.users["dan"].close()
    shutil.copytree(tmp_path / "dan", tmp_path / "dan-copy")
    dan = await Client.open(tmp_path / "dan", PASSPHRASE)
    team.users["dan"] = team.devices["dan"] = dan
    await groups.remove(ann, "club", ["dan"])
    await _drain_all(team)
    assert not [g for g in groups.list_groups(dan) if g.active]
    after = await groups.send(ann, "club", "after dan left")
    # The removal itself went out in a new Megolm session (dan's devices held the old one).
    after_box, eve_box = decode_group_box(after.body), decode_group_box(with_eve.body)
    assert after_box is not None and eve_box is not None
    assert after_box.session_id != eve_box.session_id
    got = await _drain_all(team)
    assert got["dan"] == []
    assert got["cid"] == [("club", "ann", "after dan left")]
    with pytest.raises(LocalError):
        await groups.send(dan, "club", "am I still here?")
    copy = await Client.open(tmp_path / "dan-copy", PASSPHRASE)
    try:
        assert _try_open(copy, with_eve.body) == "with eve"  # the copy does work...
        with pytest.raises(DecryptionError):
            _try_open(copy, after.body)  # ...but not after the removal
        with pytest.raises(DecryptionError):
            _try_open(dan, after.body)
    finally:
        await copy.close()
    # Added back, dan gets the state and every card again, and reads what comes next.
    await groups.add(ann, "club", ["dan"])
    await _drain_all(team)
    assert [g.name for g in groups.list_groups(dan) if g.active] == ["club"]
    await groups.send(ann, "club", "dan is back")
    got = await _drain_all(team)
    assert got["dan"] == [("club", "ann", "dan is back")]


async def test_server_database_holds_no_group_name_members_or_text(
    team: Team, server: ServerProcess
) -> None:
    ann = team.users["ann"]
    await groups.create(ann, "SECRET-GROUP-NAME-42", ["bea", "cid"])
    await groups.send(ann, "SECRET-GROUP-NAME-42", "SECRET-GROUP-TEXT-17")
    await groups.rename(ann, "SECRET-GROUP-NAME-42", "SECRET-RENAMED-99")
    group_id = ann._store.get("gname", "SECRET-RENAMED-99")
    record = groups._load(ann, group_id or b"")
    assert group_id is not None and record is not None
    # Before anyone reads (and the server deletes), everything is in its files.
    server.stop()
    markers = [b"SECRET-GROUP-NAME-42", b"SECRET-GROUP-TEXT-17", b"SECRET-RENAMED-99"]
    # Nor the group's id, nor its member list (the signed state's members, in order).
    members = msgspec.msgpack.encode(decode_group_state(record.state).members)
    markers += [group_id, members[1:]]
    assert scan_for(server.data_dir, markers) == []
    # The scan looked at real data: the state at creation, the message and the renamed
    # state are each fanned out to every member device but the sender's (bea, cid, bea's
    # and ann's laptops): four entries each, pointing at one stored body.
    bodies: list[bytes] = []
    stored_once: list[bytes] = []
    for path in server.data_dir.glob("*.db"):
        with contextlib.closing(sqlite3.connect(path)) as db:
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
            if "mailbox_entries" in tables:
                bodies += [
                    bytes(r[0])
                    for r in db.execute(
                        "SELECT coalesce(b.body, e.body) FROM mailbox_entries e"
                        " LEFT JOIN bodies b ON b.id = e.body_id"
                    )
                ]
                stored_once += [bytes(r[0]) for r in db.execute("SELECT body FROM bodies")]
    boxes = [b for b in bodies if decode_group_box(b) is not None]
    assert len(boxes) == 12 and sorted(Counter(boxes).values()) == [4, 4, 4]
    assert sorted(stored_once) == sorted(set(boxes))


def _try_open(client: Client, body: bytes) -> str:
    """Open a group entry body with any Megolm key the client holds, saving nothing."""
    box = decode_group_box(body)
    assert box is not None
    for raw in client._store.values("gin"):
        held = msgspec.msgpack.decode(raw, type=groups.InboundRecord)
        inbound = MegolmInbound.from_pickle(held.pickle, client._store.pickle_key)
        try:
            plaintext, _ = inbound.decrypt(box.megolm)
        except DecryptionError:
            continue
        return decode_group_text(unpad(plaintext)).text
    raise DecryptionError("no key opens it")
