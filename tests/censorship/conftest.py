"""Shared pieces of the censorship scenarios: a world of loopback services torn down after."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest

from samizdat.client.app import Client, Received
from samizdat.transport import TransportOptions
from tests.censorship.net import FakeDns, ServerProc, free_port, run_cli

PASSPHRASE = "correct horse battery staple"
#: Hosts that resolve only through the test's own DNS.
NAME = "chat.example.test"
#: Seconds from the first connection attempt to a message received (the issue's bound).
BOUND = 10.0


class _Closable(Protocol):
    async def close(self) -> None: ...


@dataclass
class World:
    tmp: Path
    closers: list[_Closable] = field(default_factory=list)
    servers: list[ServerProc] = field(default_factory=list)
    clients: list[Client] = field(default_factory=list)

    def add(self, thing: Any) -> Any:
        self.closers.append(thing)
        return thing

    async def dns(self, answers: dict[str, str | None]) -> FakeDns:
        return self.add(await FakeDns(answers).start())  # type: ignore[no-any-return]

    async def server(self, host: str, *args: str, port: int | None = None) -> ServerProc:
        proc = ServerProc(self.tmp / "server", host, port or free_port(host), *args)
        self.servers.append(proc)
        return await proc.start()

    async def client(self, name: str, link: str, options: TransportOptions) -> Client:
        client = await Client.create(self.tmp / name, PASSPHRASE, link, name, options)
        self.clients.append(client)
        return client

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for thing in reversed(self.closers):
            await thing.close()
        for server in self.servers:
            await server.stop()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    w = World(tmp_path)
    try:
        yield w
    finally:
        await w.close()


async def collect(client: Client, count: int, wait: float) -> list[Received]:
    got: list[Received] = []
    async for message in client.listen(count=count, timeout=wait):
        got.append(message)
    return got


async def converse(world: World, link: str, options: TransportOptions) -> tuple[Client, Client]:
    """Alice and Bob join through the blocked network; Bob writes, Alice reads, in time.

    The clock starts before the first connection attempt (``init``), as the issue asks.
    """
    start = time.monotonic()
    alice = await world.client("alice", link, options)
    bob = await world.client("bob", link, options)
    await bob.add_contact(await alice.invite(), "alice")
    await bob.send("alice", "hello through the block")
    got = await collect(alice, 1, wait=BOUND)
    elapsed = time.monotonic() - start
    assert [(m.sender, m.text) for m in got] == [("bob", "hello through the block")]
    assert elapsed < BOUND, f"took {elapsed:.1f} s"
    await alice.accept("bob")
    await alice.send("bob", "and back")
    assert [m.text for m in await collect(bob, 1, wait=BOUND)] == ["and back"]
    return alice, bob


async def probe(world: World, link: str, *flags: str, ok: bool = True) -> dict[str, Any]:
    """``samizdat [flags] probe LINK --json`` as a separate process (exit 1: unreachable)."""
    code, out, err = await run_cli(
        world.tmp / "prober", *flags, "probe", link, "--json", passphrase=PASSPHRASE
    )
    assert code == (0 if ok else 1), err[-2000:]
    report: dict[str, Any] = json.loads(out)
    return report


def flags(dns: FakeDns, doh_url: str | None = None, ca: Path | None = None) -> list[str]:
    out = ["--dns-server", dns.address, "--doh", doh_url or "none"]
    if ca is not None:
        out += ["--doh-ca", str(ca)]
    return out


async def wait_for(predicate: Any, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)
