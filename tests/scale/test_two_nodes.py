"""Two real server processes sharing PostgreSQL and Redis (DESIGN §7, issue 7).

Node A and node B run ``samizdat server --store postgresql://... --bus redis://...`` with
one identity (``--identity-dir``) and a descriptor listing both endpoints. Alice's home
link is node A's, Bob's is node B's: they talk live through two nodes, then node A is
SIGKILLed mid-conversation and Alice's client carries on through node B.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest

from samizdat.client.app import Client, Received
from samizdat.server.identity import load_or_create_identity
from tests.abuse.test_key_claims import BUDGET, claim_ids, device_with_keys
from tests.e2e.harness import PASSPHRASE, ServerProcess, free_port
from tests.e2e.raw import RawConnection
from tests.server.services import PG_DSN, REDIS_URL, drop_pg_schema

#: Longest a pushed message may take to arrive (generous for a loaded CI machine).
PUSH_WAIT = 15.0


@dataclass
class Cluster:
    a: ServerProcess
    b: ServerProcess
    store_url: str


def _node(
    root: Path, name: str, port: int, other: int, store: str, identity: Path
) -> ServerProcess:
    return ServerProcess(
        root / name,
        port=port,
        extra_args=(
            "--store",
            store,
            "--bus",
            REDIS_URL,
            "--identity-dir",
            str(identity),
            "--endpoint",
            f"wss://127.0.0.1:{other}/v1/ws",
        ),
    )


@pytest.fixture
async def schema() -> AsyncIterator[str]:
    name = f"t_{secrets.token_hex(8)}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{name}"')
    finally:
        await conn.close()
    try:
        yield name
    finally:
        await drop_pg_schema(name)


@pytest.fixture
def cluster(tmp_path: Path, schema: str) -> Iterator[Cluster]:
    store = f"{PG_DSN}?search_path={schema}"
    identity = tmp_path / "identity"
    # Made once, before either node starts, so the two never race to create it.
    load_or_create_identity(identity, ["127.0.0.1"])
    port_a, port_b = free_port(), free_port()
    a = _node(tmp_path, "node-a", port_a, port_b, store, identity)
    b = _node(tmp_path, "node-b", port_b, port_a, store, identity)
    a.start()
    try:
        b.start()
        try:
            yield Cluster(a, b, store)
        finally:
            b.stop()
    finally:
        a.stop()


async def _next(stream: AsyncIterator[Received]) -> Received:
    return await anext(stream)


async def test_live_across_nodes_then_node_a_dies(tmp_path: Path, cluster: Cluster) -> None:
    alice = await Client.create(tmp_path / "alice", PASSPHRASE, cluster.a.link, "alice")
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, cluster.b.link, "bob")
    try:
        await bob.add_contact(await alice.invite(), "alice")
        await bob.send("alice", "hello alice")
        # Idle timeouts, not deadlines: each message must arrive while the stream waits.
        to_alice = alice.listen(timeout=PUSH_WAIT)
        to_bob = bob.listen(timeout=PUSH_WAIT)
        first = await _next(to_alice)
        assert (first.sender, first.text, first.request) == ("bob", "hello alice", True)
        await alice.accept("bob")

        got_bob: list[str] = []
        got_alice: list[str] = []
        rounds, kill_at = 20, 8
        for i in range(rounds):
            await alice.send("bob", f"a{i}")
            got_bob.append((await _next(to_bob)).text)
            await bob.send("alice", f"b{i}")
            if i == kill_at:
                # b{i} is durable in PostgreSQL; node A was about to push it to Alice.
                cluster.a.kill()
            got_alice.append((await _next(to_alice)).text)
        assert got_bob == [f"a{i}" for i in range(rounds)]
        assert got_alice == [f"b{i}" for i in range(rounds)]
        assert not cluster.a.alive() and cluster.b.alive()

        # Nothing more is pending for either (no duplicate comes later).
        await to_alice.aclose()
        await to_bob.aclose()
        assert [m async for m in alice.listen(timeout=1.0)] == []
        assert [m async for m in bob.listen(timeout=1.0)] == []
        texts = [item.text for item in bob.history("alice")]
        assert texts.count("b8") == 1 and texts.count("a12") == 1
    finally:
        await alice.close()
        await bob.close()

    # Every mailbox drained and acknowledged: the shared store holds no entry.
    conn = await asyncpg.connect(cluster.store_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM mailbox_entries") == 0
        assert await conn.fetchval("SELECT count(*) FROM mailboxes") >= 2
    finally:
        await conn.close()


async def test_one_claim_budget_across_nodes(cluster: Cluster) -> None:
    """A requester that spreads its key claims over both nodes gets one budget, not two
    (the buckets are in Redis: server/budgets.py)."""
    device, (token,) = await device_with_keys(cluster.a.link, 1)
    via_a = await RawConnection.open(cluster.a.link)
    via_b = await RawConnection.open(cluster.b.link)
    try:
        claimed = []
        for i in range(BUDGET + 4):
            claimed += await claim_ids(via_a if i % 2 else via_b, token, device, 1)
    finally:
        await via_a.close()
        await via_b.close()
    assert claimed[:BUDGET] == [f"k{i:03}" for i in range(BUDGET)]
    assert claimed[BUDGET:] == ["fallback:fb"] * 4
