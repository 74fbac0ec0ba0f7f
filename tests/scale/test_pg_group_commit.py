"""Group commit on PostgreSQL: concurrent deposits of one node share a statement and a
commit, and each keeps the semantics of a deposit on its own (store/postgres.py)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

import pytest

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.server.store.base import DepositItem, DepositResult
from samizdat.server.store.postgres import PostgresStore
from tests.server.helpers import NOW_MS
from tests.server.services import fresh_schema, pg_store

QUOTA = 50


@pytest.fixture
async def store() -> AsyncIterator[PostgresStore]:
    async with pg_store(fresh_schema(), max_mailbox_entries=QUOTA) as opened:
        yield opened


def item(device_id: bytes, n: int) -> DepositItem:
    return DepositItem(device_id=device_id, msg_id=n.to_bytes(16, "big"), body=bytes([n % 256]))


async def test_concurrent_deposits_share_batches_and_keep_their_semantics(
    store: PostgresStore,
) -> None:
    devices = [os.urandom(16) for _ in range(40)]
    # 40 deposits at once, each to its own mailbox plus a shared one in reverse device
    # order (one lock order must still hold), one of them a retry of another's msg_id.
    shared = os.urandom(16)
    results = await asyncio.gather(
        *(
            store.deposit([item(shared, 1000 + k), item(d, k)], NOW_MS)
            for k, d in enumerate(reversed(devices))
        )
    )
    assert all((r.stored, r.duplicates) == (2, 0) for r in results)
    assert store.deposit_batches < 40 / 2  # grouped, not one statement per deposit
    # Seqs in one mailbox are distinct and gapless across the batches.
    shared_seqs = sorted(r.news[shared] for r in results)
    assert shared_seqs == list(range(1, 41))
    assert [e.seq for e in await store.fetch(shared, 0, 100)] == list(range(1, 41))


async def test_a_full_mailbox_in_a_batch_refuses_only_its_own_deposit(
    store: PostgresStore,
) -> None:
    full, other = os.urandom(16), os.urandom(16)
    await store.deposit([item(full, n) for n in range(QUOTA)], NOW_MS)
    outcomes = await asyncio.gather(
        store.deposit([item(other, 1)], NOW_MS),
        store.deposit([item(other, 2), item(full, QUOTA)], NOW_MS),  # all or nothing
        store.deposit([item(other, 3)], NOW_MS),
        store.deposit([item(other, 3)], NOW_MS),  # a concurrent retry: one copy
        store.deposit([item(full, 0)], NOW_MS),  # a duplicate needs no room
        return_exceptions=True,
    )
    first, refused, third, retry, duplicate = outcomes
    assert isinstance(refused, ProtocolError) and refused.code == ErrorCode.QUOTA
    assert isinstance(first, DepositResult) and first.stored == 1
    assert isinstance(third, DepositResult) and isinstance(retry, DepositResult)
    assert (third.stored + retry.stored, third.duplicates + retry.duplicates) == (1, 1)
    assert isinstance(duplicate, DepositResult) and duplicate.duplicates == 1
    entries = await store.fetch(other, 0, 10)
    assert sorted(e.msg_id[-1] for e in entries) == [1, 3]
    assert [e.seq for e in entries] == [1, 2]
    assert await store.mailbox_size(full) == QUOTA


async def test_deposits_queued_at_close_are_written_or_refused(store: PostgresStore) -> None:
    device = os.urandom(16)
    pending = [asyncio.ensure_future(store.deposit([item(device, n)], NOW_MS)) for n in range(5)]
    await asyncio.sleep(0)
    await store.close()
    done = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, DepositResult) and r.stored == 1 for r in done), done


async def test_concurrent_acks_share_a_statement_each_with_its_own_count(
    store: PostgresStore,
) -> None:
    devices = [os.urandom(16) for _ in range(10)]
    await asyncio.gather(
        *(store.deposit([item(d, n) for n in range(k + 2)], NOW_MS) for k, d in enumerate(devices))
    )
    # Every device acks all but its last entry, and the first device acks twice.
    counts = await asyncio.gather(
        *(store.ack(d, k + 1, NOW_MS) for k, d in enumerate(devices)),
        store.ack(devices[0], 2, NOW_MS),
    )
    assert list(counts) == [*(k + 1 for k in range(10)), 1]
    assert [await store.mailbox_size(d) for d in devices] == [0] + [1] * 9
    # Quota bookkeeping stays right: the freed room is usable.
    assert (await store.deposit([item(devices[0], 99)], NOW_MS)).stored == 1
