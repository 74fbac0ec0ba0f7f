"""Attachment scenarios: files with known markers, clients in this process, servers as
real processes (tests/censorship/net.py) or in-process (``server.app.start``)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from samizdat.client.app import Client
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.transport import TransportOptions
from tests.censorship.conftest import PASSPHRASE, World, collect
from tests.censorship.conftest import world as world  # the fixture

#: Bytes that must never appear in what a server stores.
MARKER = b"PLAINTEXT-MARKER-0123456789-attachment"


def make_file(path: Path, size: int) -> bytes:
    """``size`` bytes of random data with MARKER every 64 KiB; returns its SHA-256."""
    digest = hashlib.sha256()
    with path.open("wb") as fh:
        left = size
        while left:
            block = (MARKER + os.urandom(65536 - len(MARKER)))[:left]
            fh.write(block)
            digest.update(block)
            left -= len(block)
    return digest.digest()


def sha256_of(path: Path) -> bytes:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
    return digest.digest()


async def pair(world: World, link: str, options: TransportOptions) -> tuple[Client, Client]:
    """Alice and Bob are contacts on the server of ``link``; Bob has written once."""
    alice = await world.client("alice", link, options)
    bob = await world.client("bob", link, options)
    await bob.add_contact(await alice.invite(), "alice")
    await bob.send("alice", "hello")
    assert [m.text for m in await collect(alice, 1, wait=20)] == ["hello"]
    await alice.accept("bob")
    return alice, bob


@pytest.fixture
async def inproc(tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server in this process with a small blob quota (4 MiB per device)."""
    running = await start(
        ServerConfig(data_dir=tmp_path / "srv", print_link=False, blob_quota_bytes=4 << 20)
    )
    yield running
    await running.stop()


__all__ = ["MARKER", "PASSPHRASE", "make_file", "sha256_of", "pair"]
