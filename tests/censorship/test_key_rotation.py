"""The server rotates its Ed25519 key, signed by the old one (protocol §4): connected
clients follow the pushed descriptor, an offline client follows the rotation in the next
``welcome``, and nothing is lost; descriptors by other keys or forged rotations are not
followed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from samizdat.client import reach
from samizdat.client.app import Client
from samizdat.client.store import Store
from samizdat.crypto.at_rest import KdfParams
from samizdat.crypto.signing import SigningKey
from samizdat.protocol.descriptor import (
    ROTATION_CONTEXT,
    Descriptor,
    Endpoint,
    KeyRotation,
    SignedDescriptor,
    SignedRotation,
    open_descriptor,
    sign_descriptor,
    sign_rotation,
)
from samizdat.protocol.links import decode_server_link
from samizdat.transport import TransportOptions
from samizdat.transport.dial import now_ms
from tests.censorship.conftest import PASSPHRASE, World, collect, converse, wait_for


def _own_key(client: Client) -> bytes:
    """The server key our own server's newest stored descriptor carries."""
    signed, trusted = client.own_descriptor()
    return open_descriptor(signed, now_ms(), expected_key=trusted).server_key


async def test_clients_follow_a_rotated_server_key(world: World) -> None:
    server = await world.server("127.0.0.2")
    first_link = server.link
    old_key = decode_server_link(first_link).descriptor
    old = open_descriptor(old_key, now_ms()).server_key
    alice, bob = await converse(world, first_link, TransportOptions())
    # Carol joins, then goes offline through the rotation with only the old descriptor.
    carol = await world.client("carol", first_link, TransportOptions())
    await carol.add_contact(await alice.invite(), "alice")
    await carol.close()
    world.clients.remove(carol)

    received: list[str] = []

    async def listen_forever() -> None:
        async for message in bob.listen():
            received.append(message.text)

    listener = asyncio.create_task(listen_forever())
    try:
        for i in range(3):
            await alice.send("bob", f"before {i}")
        await wait_for(lambda: len(received) == 3)

        (server.data_dir / "rotate-key").touch()
        server.hup()
        # Pushed over the open connections, verified along the rotation, stored.
        await wait_for(lambda: _own_key(alice) != old and _own_key(bob) != old)
        new = _own_key(alice)
        assert _own_key(bob) == new
        assert not (server.data_dir / "rotate-key").exists()
        assert list(server.data_dir.glob("server.key.old-*"))
        fresh = open_descriptor(decode_server_link(server.link).descriptor, now_ms(), old)
        assert fresh.server_key == new

        for i in range(3):
            await alice.send("bob", f"after {i}")
        await wait_for(lambda: len(received) == 6, 10)
    finally:
        listener.cancel()
        await asyncio.wait([listener])
    assert received == [f"before {i}" for i in range(3)] + [f"after {i}" for i in range(3)]

    # Bob reopens: his identity still names the old key; the alias leads to the new
    # descriptor and his login proof covers the new key (else the server refuses it).
    await bob.close()
    world.clients.remove(bob)
    bob = await Client.open(world.tmp / "bob", PASSPHRASE, TransportOptions())
    world.clients.append(bob)
    assert _own_key(bob) == new
    await bob.send("alice", "bob after reopening")
    assert [m.text for m in await collect(alice, 1, wait=10)] == ["bob after reopening"]

    # Carol comes back knowing only the old descriptor: the welcome carries the rotation.
    carol = await Client.open(world.tmp / "carol", PASSPHRASE, TransportOptions())
    world.clients.append(carol)
    await carol.send("alice", "carol was away")
    got = await collect(alice, 1, wait=10)
    assert [(m.sender, m.text) for m in got] == [("carol", "carol was away")]
    assert _own_key(carol) == new
    await alice.accept("carol")
    await alice.send("carol", "welcome back")
    assert [m.text for m in await collect(carol, 1, wait=10)] == ["welcome back"]


# -- the client's store: what it follows and what it refuses ---------------------------

OLD, NEW, STRANGER = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()


def _signed(key: SigningKey, seq: int, rotations: list[SignedRotation]) -> SignedDescriptor:
    now = time.time_ns() // 1_000_000
    descriptor = Descriptor(
        server_key=key.public_bytes,
        seq=seq,
        endpoints=[Endpoint(url="wss://127.0.0.2:8443/v1/ws")],
        tls_ca=b"ca",
        tls_pin=b"p" * 32,
        issued_at=now - 10,
        expires_at=now + 3600_000,
        rotations=rotations,
    )
    return sign_descriptor(descriptor, key)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store.create(tmp_path, "pass", KdfParams(memory_kib=1024, iterations=1, lanes=1))
    try:
        yield s
    finally:
        s.close()


def test_store_follows_rotation_and_aliases_the_old_key(store: Store) -> None:
    first = _signed(OLD, 1, [])
    assert reach.save_descriptor(store, OLD.public_bytes, first)
    rotated = _signed(NEW, 2, [sign_rotation(OLD, NEW, 1)])
    assert reach.save_descriptor(store, OLD.public_bytes, rotated)
    assert reach.current_key(store, OLD.public_bytes) == NEW.public_bytes
    # Records naming the old key get the new descriptor.
    assert reach.newest_descriptor(store, OLD.public_bytes, first) == rotated
    # Later ones by the new key are taken when asked by the old key, even without the hop.
    later = _signed(NEW, 3, [])
    assert reach.save_descriptor(store, OLD.public_bytes, later)
    assert reach.newest_descriptor(store, OLD.public_bytes, first) == later


def test_store_refuses_unrelated_key_and_forged_rotation(store: Store) -> None:
    first = _signed(OLD, 1, [])
    assert reach.save_descriptor(store, OLD.public_bytes, first)
    assert not reach.save_descriptor(store, OLD.public_bytes, _signed(STRANGER, 9, []))
    body = msgspec.msgpack.encode(
        KeyRotation(old_key=OLD.public_bytes, new_key=STRANGER.public_bytes, issued_at=1)
    )
    forged = SignedRotation(
        body=body,
        old_signature=STRANGER.sign(ROTATION_CONTEXT, body),
        new_signature=STRANGER.sign(ROTATION_CONTEXT, body),
    )
    assert not reach.save_descriptor(store, OLD.public_bytes, _signed(STRANGER, 9, [forged]))
    assert reach.current_key(store, OLD.public_bytes) == OLD.public_bytes
    assert reach.newest_descriptor(store, OLD.public_bytes, first) == first


def test_store_does_not_roll_back_to_the_old_key(store: Store) -> None:
    assert reach.save_descriptor(
        store, OLD.public_bytes, _signed(NEW, 2, [sign_rotation(OLD, NEW, 1)])
    )
    # A node that has not rotated yet still signs with the old key, with a higher seq.
    stale = _signed(OLD, 5, [])
    assert not reach.save_descriptor(store, OLD.public_bytes, stale)
    assert reach.current_key(store, OLD.public_bytes) == NEW.public_bytes
    assert reach.current_key(store, NEW.public_bytes) == NEW.public_bytes
