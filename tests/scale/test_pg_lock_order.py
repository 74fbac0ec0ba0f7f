"""Lock order on PostgreSQL: acks and the TTL sweeps, run together on real PostgreSQL,
never deadlock (store/postgres.py: mailboxes in device order, then entries, then bodies
in id order, in every transaction that deletes entries)."""

from __future__ import annotations

import asyncio
import os
import random
from collections.abc import AsyncIterator

import asyncpg
import pytest

from samizdat.server.store.base import DepositItem
from samizdat.server.store.postgres import PostgresStore
from tests.server.services import PG_DSN, fresh_schema, pg_store

ROUNDS = 60
DEVICES = 12
RECENT_MS = 1_000_000
OLD_MS = 1_000


@pytest.fixture
def schema() -> str:
    return fresh_schema()


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresStore]:
    async with pg_store(schema) as opened:
        yield opened


async def _fill(store: PostgresStore, devices: list[bytes], acked: bytes) -> None:
    """A fan-out body shared by every device (so ack and sweep both release it); the
    acked device's copy stays, each other copy is old (and disappearing), and the acked
    device also holds an old entry after it, which the sweep deletes."""
    body = os.urandom(32)
    fanout = [
        DepositItem(
            device_id=d,
            msg_id=os.urandom(16),
            body=body,
            expires_at=None if d == acked else OLD_MS,
        )
        for d in devices
    ]
    await store.deposit(fanout, RECENT_MS)
    await store.deposit(
        [DepositItem(device_id=acked, msg_id=os.urandom(16), body=b"x", expires_at=OLD_MS)],
        RECENT_MS,
    )


async def test_acks_and_sweeps_together_never_deadlock(store: PostgresStore) -> None:
    for _ in range(ROUNDS):
        # The acked device sorts last: the old sweep updated mailboxes in device order
        # after its delete had locked the shared body, so it reached this one last.
        devices = sorted(os.urandom(16) for _ in range(DEVICES))
        acked = devices[-1]
        await _fill(store, devices, acked)
        up_to = await store.last_seq(acked) - 1
        deleted = await asyncio.gather(
            store.expire_timed(OLD_MS + 1),
            store.ack(acked, up_to, RECENT_MS),
        )
        assert deleted[1] == 1
        assert await store.mailbox_size(acked) == 0
    assert store.retried["DeadlockDetectedError"] == 0, store.retried


async def test_mixed_writers_keep_counters_and_refs_exact(
    store: PostgresStore, schema: str
) -> None:
    """Deposits (fan-outs, some disappearing), acks, and both sweeps at once: no deadlock,
    and afterwards every mailbox's size is its number of entries and every body's refs
    the number of entries pointing at it."""
    rng = random.Random(7)
    devices = [os.urandom(16) for _ in range(10)]
    for round_ in range(1, 31):
        now = round_ * 100

        def fanout(now: int = now) -> list[DepositItem]:
            body = os.urandom(24)
            chosen = rng.sample(devices, rng.randint(2, len(devices)))
            return [
                DepositItem(
                    device_id=d,
                    msg_id=os.urandom(16),
                    body=body,
                    expires_at=rng.choice([None, now + 50, now + 150]),
                )
                for d in chosen
            ]

        await store.deposit(fanout(), now)
        acks = [
            store.ack(d, rng.randint(0, await store.last_seq(d)), now)
            for d in rng.sample(devices, 4)
        ]
        await asyncio.gather(
            store.deposit(fanout(), now),
            *acks,
            store.expire(now - 250),
            store.expire_timed(now),
        )
    assert store.retried["DeadlockDetectedError"] == 0, store.retried
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        sizes = await conn.fetch(
            "SELECT m.device_id, m.size, (SELECT count(*) FROM mailbox_entries e"
            " WHERE e.device_id = m.device_id) FROM mailboxes m"
        )
        refs = await conn.fetch(
            "SELECT b.id, b.refs, (SELECT count(*) FROM mailbox_entries e"
            " WHERE e.body_id = b.id) FROM bodies b"
        )
    finally:
        await conn.close()
    assert len(sizes) == len(devices)
    assert all(size == count for _, size, count in sizes)
    assert all(n == count and n > 0 for _, n, count in refs)


async def test_two_nodes_storing_one_retry_in_opposite_orders_never_deadlock(
    store: PostgresStore, schema: str
) -> None:
    """A retried deposit can reach two nodes at once, its envelopes in another order on
    each (two senders' batches, a reordered resend). Each node writes a batch's msg_ids in
    (device, msg_id) order, so the two wait on the unique index in one order: no cycle."""
    other = PostgresStore(PG_DSN, schema=schema, pool_size=4)
    await other.open()
    try:
        device = os.urandom(16)
        for round_ in range(40):
            items = [DepositItem(device, os.urandom(16), b"retry") for _ in range(20)]
            results = await asyncio.gather(
                store.deposit(items, RECENT_MS), other.deposit(items[::-1], RECENT_MS)
            )
            assert sum(r.stored for r in results) == len(items), round_
            assert sum(r.duplicates for r in results) == len(items), round_
        assert await store.mailbox_size(device) == 40 * 20
        retried = store.retried + other.retried
        assert retried["DeadlockDetectedError"] == 0, retried
    finally:
        await other.close()
