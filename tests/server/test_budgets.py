"""Claim budgets shared through Redis decide exactly as one node's buckets in memory.

Needs Redis at REDIS_URL: its absence fails.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

import pytest
import redis.asyncio as aioredis
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.server.budgets import KEY_PREFIX, LocalClaimBudgets, RedisClaimBudgets
from samizdat.server.ratelimit import RateLimits
from tests.e2e.harness import free_port

from .services import REDIS_URL

#: (which of three keys claims, seconds the clock moved first: back, too, sometimes).
_CLAIMS = st.lists(
    st.tuples(st.integers(0, 2), st.floats(-600, 4000, allow_nan=False)), max_size=40
)


async def _compare(claims: list[tuple[int, float]], start: float, limits: RateLimits) -> int:
    now = start

    def clock() -> float:
        return now

    local = LocalClaimBudgets(limits, clock)
    shared = RedisClaimBudgets(REDIS_URL, limits, clock)
    keys = [secrets.token_bytes(48) for _ in range(3)]
    granted = 0
    try:
        for which, advance in claims:
            now += advance
            decision = await shared.allow(keys[which])
            assert decision == await local.allow(keys[which]), (which, now - start)
            granted += decision
    finally:
        cleanup = aioredis.Redis.from_url(REDIS_URL)
        await cleanup.delete(*(KEY_PREFIX + key for key in keys))
        await cleanup.aclose()
        await shared.close()
    return granted


@settings(max_examples=60, deadline=None)
@given(
    claims=_CLAIMS,
    start=st.floats(1.7e9, 1.9e9),
    # Slow refills only: Redis expires a bucket on its own clock, a second after it would
    # be full again, and an example must not outlast that.
    rate=st.sampled_from([RateLimits().claim_rate, 1 / 60]),
    burst=st.sampled_from([1.0, 3.0, RateLimits().claim_burst]),
)
def test_redis_budgets_decide_as_the_local_buckets(
    claims: list[tuple[int, float]], start: float, rate: float, burst: float
) -> None:
    limits = RateLimits(claim_rate=rate, claim_burst=burst)
    asyncio.run(_compare(claims, start, limits))


async def test_a_burst_then_the_refill() -> None:
    limits = RateLimits()
    claims = [(0, 0.0)] * 12 + [(0, 1 / limits.claim_rate)] + [(0, 0.0)]
    # Ten at once, then one per refill period: a test that fails if nothing is spent.
    assert await _compare(claims, 1.8e9, limits) == int(limits.claim_burst) + 1


async def test_without_redis_a_claim_gets_the_fallback_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    budgets = RedisClaimBudgets(f"redis://127.0.0.1:{free_port()}/0", RateLimits())
    try:
        with caplog.at_level(logging.WARNING, "samizdat.server.budgets"):
            assert await budgets.allow(secrets.token_bytes(48)) is False
    finally:
        await budgets.close()
    assert "claim budget unavailable" in caplog.text
