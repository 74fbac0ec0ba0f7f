"""Two in-process Clients against a real server subprocess on 127.0.0.1, port 0."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from samizdat.client import receiving
from samizdat.client.app import Client, Received
from samizdat.client.messaging import device_keys, seal_to_device
from samizdat.crypto.olm import OlmAccount
from samizdat.crypto.padding import pad
from samizdat.errors import LocalError, NotFound, WrongPassphrase
from samizdat.protocol import frames
from samizdat.protocol.envelope import Payload, PayloadKind, encode_struct

PASSPHRASE = "a passphrase for tests"


@pytest.fixture
def server_link(tmp_path: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samizdat",
            "server",
            "--data-dir",
            str(tmp_path / "server"),
            "--listen",
            "127.0.0.1:0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.stdout is not None
        link = proc.stdout.readline().decode().strip()
        assert link.startswith("samizdat:server/")
        yield link
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


async def _read(client: Client, count: int, wait: float = 20.0) -> list[Received]:
    return [m async for m in client.listen(count=count, timeout=wait)]


@pytest.fixture
async def people(tmp_path: Path, server_link: str) -> AsyncIterator[tuple[Client, Client]]:
    alice = await Client.create(tmp_path / "alice", PASSPHRASE, server_link, "Alice")
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, server_link, "Bob")
    try:
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


async def test_first_contact_request_accept_and_answer(people: tuple[Client, Client]) -> None:
    alice, bob = people
    await alice.add_contact(await bob.invite(), "bob")
    first = await alice.send("bob", "hello bob")
    await alice.send("bob", "are you there")
    got = await _read(bob, 2)
    assert [(m.sender, m.text, m.request) for m in got] == [
        ("Alice", "hello bob", True),
        ("Alice", "are you there", True),
    ]
    assert got[0].id == first
    assert [c.name for c in bob.requests()] == ["Alice"]
    await bob.accept("Alice")
    assert bob.requests() == []
    await bob.send("Alice", "hi alice")
    reply = await _read(alice, 1)
    assert [(m.sender, m.text, m.request) for m in reply] == [("bob", "hi alice", False)]
    await alice.send("bob", "third")
    assert [(m.text, m.request) for m in await _read(bob, 1)] == [("third", False)]
    assert [h.text for h in bob.history("Alice")] == [
        "hello bob",
        "are you there",
        "hi alice",
        "third",
    ]
    assert [h.direction for h in alice.history("bob")] == ["out", "out", "in", "out"]
    assert alice.safety_number("bob") == bob.safety_number("Alice")
    assert await _read(bob, 1, wait=0.5) == []
    assert {c.name: c.state for c in alice.contacts()} == {"bob": "contact"}


async def test_many_messages_on_one_connection_in_order(people: tuple[Client, Client]) -> None:
    alice, bob = people
    await bob.add_contact(await alice.invite(), "alice")
    for i in range(40):
        await bob.send("alice", f"n{i}")
    got = await _read(alice, 40)
    assert [m.text for m in got] == [f"n{i}" for i in range(40)]
    assert {m.sender for m in got} == {"Bob"}


async def test_block_drops_messages(people: tuple[Client, Client]) -> None:
    alice, bob = people
    await alice.add_contact(await bob.invite(), "bob")
    await alice.send("bob", "one")
    assert [m.text for m in await _read(bob, 1)] == ["one"]
    await bob.block("Alice")
    await alice.send("bob", "two (dropped)")
    assert await _read(bob, 1, wait=1.0) == []
    assert {c.name: c.state for c in bob.contacts()} == {"Alice": "blocked"}
    with pytest.raises(LocalError):
        await bob.send("Alice", "to a blocked contact")


async def test_errors_and_reopen(people: tuple[Client, Client], tmp_path: Path) -> None:
    alice, bob = people
    with pytest.raises(NotFound):
        await alice.send("nobody", "x")
    link = await bob.invite()
    await alice.add_contact(link, "bob")
    with pytest.raises(LocalError):
        await alice.add_contact(link, "bob again")
    with pytest.raises(LocalError):
        await bob.add_contact(await bob.invite(), "myself")
    with pytest.raises(WrongPassphrase):
        await Client.open(tmp_path / "alice", "wrong")
    await alice.send("bob", "before reopen")
    await bob.close()
    again = await Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        assert [m.text for m in await _read(again, 1)] == ["before reopen"]
        assert again.server_link == bob.server_link
    finally:
        await again.close()


async def test_no_secret_in_reprs(people: tuple[Client, Client]) -> None:
    alice, bob = people
    await alice.add_contact(await bob.invite(), "bob")
    await alice.send("bob", "SECRET-TEXT-MARKER")
    [message] = await _read(bob, 1)
    needles = [alice.own_user_key.hex(), bob.own_user_key.hex(), "SECRET-TEXT-MARKER"]
    objects = [alice, bob, message, *bob.history("Alice"), *bob.contacts()]
    for obj in objects:
        text = repr(obj) + str(obj)
        assert not [n for n in needles if n in text], type(obj)


async def test_sessions_let_go_are_remembered(people: tuple[Client, Client]) -> None:
    """``_save_sessions`` keeps KEEP_OLM_SESSIONS per device and remembers the ids of the
    rest, oldest first."""
    _, bob = people
    peer = OlmAccount.create()
    key = peer.generate_fallback_key().key
    made = [bob._load_account().create_outbound_session(peer.identity_key, key) for _ in range(19)]
    with bob._store.locked():
        bob._save_sessions(peer.identity_key, made[:17])
        assert bob._retired_sessions(peer.identity_key) == [made[16].session_id]
        bob._save_sessions(peer.identity_key, made[17:] + made[:16])
    kept = [s.session_id for s in bob._load_sessions(peer.identity_key)]
    assert kept == [s.session_id for s in made[17:] + made[:14]]
    assert bob._retired_sessions(peer.identity_key) == [
        s.session_id for s in (made[16], made[14], made[15])
    ]


async def test_a_late_pre_key_message_of_a_session_let_go_is_read_and_not_kept(
    people: tuple[Client, Client],
) -> None:
    """Through the receive path: the copy that reads the late message is not kept first
    (it would carry bob's next messages, which the peer's session cannot read)."""
    _, bob = people
    peer = OlmAccount.create()
    with bob._store.locked():
        account = bob._load_account()
        fallback = account.generate_fallback_key()
        account.mark_keys_as_published()
        bob._save_account(account)
    to_bob = peer.create_outbound_session(account.identity_key, fallback.key)
    keys = device_keys(account, bob._sealing)

    def entry(seq: int) -> frames.Entry:
        payload = Payload(msg_id=os.urandom(16), sent_at=0, kind=PayloadKind.TEXT, text="hi")
        olm_type, olm = to_bob.encrypt(pad(encode_struct(payload)))
        body = seal_to_device(keys, peer.identity_key, olm_type, olm)
        return frames.Entry(seq=seq, msg_id=os.urandom(16), body=body, received_at=0)

    late, first = entry(1), entry(2)
    with bob._store.locked():
        receiving.open_mailbox_entry(bob, first)
        (held,) = bob._load_sessions(peer.identity_key)
        key = peer.generate_fallback_key().key
        newer = [account.create_outbound_session(peer.identity_key, key) for _ in range(16)]
        bob._save_sessions(peer.identity_key, [*newer, held])  # ``held`` is let go
        receiving.open_mailbox_entry(bob, late)

    kept = [s.session_id for s in bob._load_sessions(peer.identity_key)]
    assert kept == [s.session_id for s in newer]
    assert bob._retired_sessions(peer.identity_key) == [held.session_id]
