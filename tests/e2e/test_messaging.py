"""Must-show end-to-end behaviour of 1:1 messaging against a real server process."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from samizdat.client.app import Client, Received
from samizdat.errors import ConnectError
from tests.e2e.harness import PASSPHRASE, ServerProcess, scan_for


async def _collect(client: Client, count: int, wait: float = 30.0) -> list[Received]:
    got: list[Received] = []
    async for message in client.listen(count=count, timeout=wait):
        got.append(message)
    return got


@asynccontextmanager
async def _contacts(
    tmp_path: Path, server: ServerProcess, first: str, second: str
) -> AsyncIterator[tuple[Client, Client]]:
    """Two people, contacts of each other: the second added the first's invite and wrote first."""
    alice = await Client.create(tmp_path / "alice", PASSPHRASE, server.link, first)
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, server.link, second)
    try:
        await bob.add_contact(await alice.invite(), first)
        await bob.send(first, f"hello {first}")
        got = await _collect(alice, 1)
        assert [(m.sender, m.text, m.request) for m in got] == [(second, f"hello {first}", True)]
        await alice.accept(second)
        yield alice, bob
    finally:
        await alice.close()
        await bob.close()


@pytest.fixture
async def pair(tmp_path: Path, server: ServerProcess) -> AsyncIterator[tuple[Client, Client]]:
    """Alice and Bob, contacts of each other: Bob added Alice's invite and wrote first."""
    async with _contacts(tmp_path, server, "alice", "bob") as clients:
        yield clients


async def test_hundred_messages_each_way_exactly_once_in_order(
    pair: tuple[Client, Client],
) -> None:
    alice, bob = pair
    for i in range(100):
        await alice.send("bob", f"a->b {i}")
        await bob.send("alice", f"b->a {i}")
    to_bob = await _collect(bob, 100)
    to_alice = await _collect(alice, 100)
    assert [m.text for m in to_bob] == [f"a->b {i}" for i in range(100)]
    assert [m.text for m in to_alice] == [f"b->a {i}" for i in range(100)]
    assert {m.sender for m in to_bob} == {"alice"}
    assert not any(m.request for m in to_bob + to_alice)
    # Nothing more is pending: a further listen yields nothing.
    assert await _collect(bob, 1, wait=1.0) == []
    texts = [item.text for item in bob.history("alice")]
    assert texts.count("a->b 42") == 1 and texts.count("b->a 42") == 1


async def test_offline_recipient_gets_everything_on_next_listen(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    alice, bob = pair
    await bob.close()
    for i in range(50):
        await alice.send("bob", f"while you were away {i}")
    bob_again = await Client.open(tmp_path / "bob", PASSPHRASE)
    try:
        got = await _collect(bob_again, 50)
        assert [m.text for m in got] == [f"while you were away {i}" for i in range(50)]
    finally:
        await bob_again.close()


async def test_acknowledged_deposits_survive_sigkill(
    pair: tuple[Client, Client], server: ServerProcess
) -> None:
    alice, bob = pair
    for i in range(30):
        await alice.send("bob", f"durable {i}")  # returns only after DepositOk
    server.kill()
    server.start()
    got = await _collect(bob, 30)
    assert [m.text for m in got] == [f"durable {i}" for i in range(30)]
    assert await _collect(bob, 1, wait=1.0) == []
    # Alice can still write after the restart (her connection reconnects).
    await alice.send("bob", "after restart")
    assert [m.text for m in await _collect(bob, 1)] == ["after restart"]


async def test_no_plaintext_on_server_or_clients_disk(
    server: ServerProcess, tmp_path: Path
) -> None:
    # Names long enough that ciphertext and keys cannot contain them by chance: three letters
    # like "bob" turn up in a few megabytes of random bytes about once in four runs.
    first, second = "Alice-Quokka-Contact", "Bob-Pangolin-Contact"
    async with _contacts(tmp_path, server, first, second) as (alice, bob):
        markers = [f"MARKER-{i}-zebra-quartz" for i in range(10)]
        for i, marker in enumerate(markers):
            if i % 2:
                await alice.send(second, marker)
            else:
                await bob.send(first, marker)
        await _collect(bob, 5)
        await _collect(alice, 5)
        assert [item.text for item in bob.history(first)][-10:] == markers
    texts = markers + [first, second]  # contact names are metadata too
    needles = [t.encode() for t in texts] + [t.encode("utf-16-le") for t in texts]
    for root in (server.data_dir, server.log_path, tmp_path / "alice", tmp_path / "bob"):
        assert scan_for(root, needles) == [], root


async def test_forward_secrecy_old_ciphertext_unreadable_with_later_state(
    pair: tuple[Client, Client], tmp_path: Path
) -> None:
    alice, bob = pair
    captured: list[bytes] = []
    for i in range(50):
        await alice.send("bob", f"secret {i}")
        if i == 0:
            captured.append(alice.last_sent_envelope("bob"))
    got = await _collect(bob, 50)
    assert got[0].text == "secret 0"
    # Bob's complete state after message 50, copied as a thief would.
    await bob.close()
    stolen = tmp_path / "stolen"
    shutil.copytree(tmp_path / "bob", stolen)
    thief = await Client.open(stolen, PASSPHRASE)
    try:
        with pytest.raises(Exception) as excinfo:  # noqa: B017 - any refusal will do
            thief.open_envelope(captured[0])
        assert "secret 0" not in str(excinfo.value)
    finally:
        await thief.close()


async def test_listen_one_at_a_time_loses_nothing_from_a_batch(
    pair: tuple[Client, Client],
) -> None:
    """Deliveries come in batches; taking one message per call must not drop the rest."""
    alice, bob = pair
    for i in range(7):
        await alice.send("bob", f"one by one {i}")
    got = []
    for _ in range(7):
        got += [m.text for m in await _collect(bob, 1, wait=10.0)]
    assert got == [f"one by one {i}" for i in range(7)]
    assert await _collect(bob, 1, wait=1.0) == []


async def test_a_send_that_failed_is_delivered_later_once_and_in_order(
    pair: tuple[Client, Client], server: ServerProcess
) -> None:
    alice, bob = pair
    server.kill()
    with pytest.raises(ConnectError):
        await alice.send("bob", "written while the server was down")
    server.start()
    await alice.send("bob", "written after it came back")
    got = await _collect(bob, 2)
    assert [m.text for m in got] == [
        "written while the server was down",
        "written after it came back",
    ]
    assert await _collect(bob, 1, wait=1.0) == []


async def test_queued_messages_keep_their_order_when_the_server_comes_back(
    pair: tuple[Client, Client], server: ServerProcess
) -> None:
    """A newer message never overtakes older queued ones to the same contact."""
    alice, bob = pair
    server.kill()
    for text in ("first, queued", "second, queued"):
        with pytest.raises(ConnectError):
            await alice.send("bob", text)
    server.start()
    await alice.send("bob", "third, live")
    got = await _collect(bob, 3)
    assert [m.text for m in got] == ["first, queued", "second, queued", "third, live"]
    assert [item.text for item in alice.history("bob")][-3:] == [m.text for m in got]
