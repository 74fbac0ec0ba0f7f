"""A client keeps the newest valid descriptor of each server, and nothing else (DESIGN §4)."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from samizdat.client import reach
from samizdat.client.store import Store
from samizdat.crypto.at_rest import KdfParams
from samizdat.crypto.signing import SigningKey
from samizdat.protocol.descriptor import Descriptor, Endpoint, SignedDescriptor, sign_descriptor

SERVER = SigningKey.generate()
OTHER = SigningKey.generate()


def _signed(seq: int, key: SigningKey = SERVER, expires_in: int = 3600_000) -> SignedDescriptor:
    now = time.time_ns() // 1_000_000
    descriptor = Descriptor(
        server_key=key.public_bytes,
        seq=seq,
        endpoints=[Endpoint(url=f"wss://127.0.0.{seq % 200 + 2}:8443/v1/ws")],
        tls_ca=b"ca",
        tls_pin=b"p" * 32,
        issued_at=now - 10,
        expires_at=now + expires_in,
    )
    return sign_descriptor(descriptor, key)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    # A cheap KDF: these tests are about records, not the KDF.
    s = Store.create(tmp_path, "pass", KdfParams(memory_kib=1024, iterations=1, lanes=1))
    yield s
    s.close()


def test_newer_replaces_older_never_the_reverse(store: Store) -> None:
    key = SERVER.public_bytes
    assert reach.save_descriptor(store, key, _signed(5))
    assert reach.save_descriptor(store, key, _signed(7))
    assert not reach.save_descriptor(store, key, _signed(6))
    assert not reach.save_descriptor(store, key, _signed(7))
    assert reach.newest_descriptor(store, key, _signed(6)) == store_value(store, key)
    newer = _signed(9)
    assert reach.newest_descriptor(store, key, newer) is newer


def store_value(store: Store, key: bytes) -> SignedDescriptor:
    raw = store.get("descriptor", key)
    assert raw is not None
    return msgspec.msgpack.decode(raw, type=SignedDescriptor)


def test_other_key_expired_or_forged_are_rejected(store: Store) -> None:
    key = SERVER.public_bytes
    assert not reach.save_descriptor(store, key, _signed(50, key=OTHER))
    assert not reach.save_descriptor(store, key, _signed(51, expires_in=-1))
    good = _signed(52)
    forged = SignedDescriptor(body=good.body, signature=bytes(64))
    assert not reach.save_descriptor(store, key, forged)
    assert store.get("descriptor", key) is None
    # What the caller holds wins over anything invalid.
    assert reach.newest_descriptor(store, key, good) is good


def test_route_memory_and_backoff(store: Store) -> None:
    key = SERVER.public_bytes
    assert reach.preferred_route(store, key) is None
    reach.save_route(store, key, "wss|wss://x|literal|")
    assert reach.preferred_route(store, key) == "wss|wss://x|literal|"
    rng = random.Random(1)
    waits = [reach.backoff(n, rng) for n in range(1, 12)]
    assert 0.12 <= waits[0] <= 0.38 and all(w <= 22.5 for w in waits)
    assert max(waits) >= 7.5  # it does grow
