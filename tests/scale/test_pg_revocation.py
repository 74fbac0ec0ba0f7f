"""A revocation on one node is seen by the next lookup on another node, however soon:
two PostgresStores on one schema, each with its own Redis bus, as two nodes are
(store/postgres.py ``share_invalidations`` with a barrier, bus/redis.py ``caught_up``).

Both nodes share this process's event loop, so B's lookup runs right after A's revoke
returns, before B's reader has handled the invalidation that Redis has already sent:
the "one loop turn" of a busy node, every time.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest

from samizdat.server.bus.redis import RedisBus
from samizdat.server.store.postgres import PostgresStore
from tests.server.services import PG_DSN, REDIS_URL, drop_pg_schema
from tests.server.test_bus_redis import CuttableProxy

ROUNDS = 30


async def _node(
    stack: AsyncExitStack, schema: str, redis_url: str = REDIS_URL
) -> tuple[PostgresStore, RedisBus]:
    store = PostgresStore(PG_DSN, schema=schema, pool_size=2)
    await store.open()
    stack.push_async_callback(store.close)
    bus = RedisBus(redis_url)
    await bus.open()
    stack.push_async_callback(bus.close)
    bus.carry_invalidations(store)
    store.share_invalidations(bus.invalidate, bus.caught_up)
    for _ in range(100):  # live once Redis confirms the invalidation channel
        if store._cache_live:
            return store, bus
        await asyncio.sleep(0.05)
    raise AssertionError("cache never went live")


@pytest.fixture
async def nodes() -> AsyncIterator[tuple[PostgresStore, PostgresStore, RedisBus]]:
    schema = f"t_{secrets.token_hex(8)}"
    try:
        async with AsyncExitStack() as stack:
            a, _ = await _node(stack, schema)
            b, bus_b = await _node(stack, schema)
            yield a, b, bus_b
    finally:
        await drop_pg_schema(schema)


async def test_a_lookup_right_after_a_revocation_elsewhere_misses(
    nodes: tuple[PostgresStore, PostgresStore, RedisBus],
) -> None:
    a, b, _ = nodes
    user = os.urandom(32)
    for _ in range(ROUNDS):
        token, other = os.urandom(32), os.urandom(32)
        await a.add_token(user, token)
        await a.add_token(user, other)
        # B memoises both answers (the second lookup of each is served from memory).
        for _ in range(2):
            assert await b.user_for_token(token) == user
            assert (await b.fanout_targets([other]))[other][0] == user
        assert await a.revoke_token(user, token)
        assert await b.user_for_token(token) is None
        assert await a.revoke_token(user, other)
        assert await b.fanout_targets([other]) == {}


async def test_lookups_at_once_share_a_barrier_and_still_answer(
    nodes: tuple[PostgresStore, PostgresStore, RedisBus],
) -> None:
    a, b, bus_b = nodes
    users = [os.urandom(32) for _ in range(20)]
    tokens = [os.urandom(32) for _ in users]
    for user, token in zip(users, tokens, strict=True):
        await a.add_token(user, token)
        assert await b.user_for_token(token) == user  # memoised now
    pings = bus_b.barriers_sent
    answers = await asyncio.gather(*(b.user_for_token(t) for t in tokens))
    assert answers == users
    assert bus_b.barriers_sent - pings == 1  # one round trip to Redis for all 20


async def test_a_revocation_missed_on_a_lost_connection_is_not_served() -> None:
    """B's connection to Redis is reset just before A revokes: B never gets that
    invalidation, and its next lookup (before or after it notices) reads the database."""
    proxy = CuttableProxy(int(REDIS_URL.rsplit(":", 1)[1].split("/")[0]))
    await proxy.start()
    schema = f"t_{secrets.token_hex(8)}"
    try:
        async with AsyncExitStack() as stack:
            a, _ = await _node(stack, schema)
            b, bus_b = await _node(stack, schema, f"redis://127.0.0.1:{proxy.port}/0")
            user, token = os.urandom(32), os.urandom(32)
            await a.add_token(user, token)
            for _ in range(2):
                assert await b.user_for_token(token) == user
            proxy.cut()
            assert await a.revoke_token(user, token)
            assert await asyncio.wait_for(b.user_for_token(token), 10) is None
            # And the barrier works again once B is back.
            for _ in range(100):
                if await bus_b.caught_up():
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("barrier never recovered")
    finally:
        await proxy.close()
        await drop_pg_schema(schema)
