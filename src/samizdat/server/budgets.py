"""One-time key claim budgets: in this process, or shared by every node through Redis.

A requester (a delivery token) may claim ``RateLimits.claim_burst`` one-time keys of a
device, refilled at ``claim_rate``; beyond that it gets the fallback key
(docs/security.md). On one node the buckets live in memory. With ``--bus redis://…``
they live in Redis, so that a requester spreading its claims over *n* nodes does not get
*n* budgets: one Lua script per claim reads, refills, spends and writes the bucket
atomically, with the same arithmetic as :class:`~samizdat.server.ratelimit.TokenBucket`
(IEEE doubles in both; ``tests/server/test_budgets.py`` checks that the two decide alike).

What Redis holds: the bucket of a (token hash, device id) pair that claimed lately, for
as long as it takes to refill (at most ``claim_burst / claim_rate`` plus a second); a
full bucket is the same as none. The clock is the nodes' wall clock, which they share;
a clock that goes back refills nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from samizdat.server.ratelimit import KeyedBuckets, RateLimits

__all__ = ["KEY_PREFIX", "ClaimBudgets", "LocalClaimBudgets", "RedisClaimBudgets"]

_log = logging.getLogger(__name__)

#: A bucket's Redis key: this, then the token hash and the device id.
KEY_PREFIX: Final = b"samizdat:budget:"
#: Seconds a claim waits for Redis before it is answered the fallback key.
_TIMEOUT: Final = 2.0

#: KEYS[1] the bucket; ARGV rate, burst, now (seconds). Returns 1 if a claim may take a
#: one-time key. Numbers are written with 17 significant digits so that every double
#: survives the round trip through a string exactly.
_TAKE: Final = """
local rate, burst, now = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local held = redis.call('HMGET', KEYS[1], 'level', 'at')
local level, at = tonumber(held[1]), tonumber(held[2])
if level == nil or at == nil then
    level, at = burst, now
end
if now > at then
    level = math.min(burst, level + (now - at) * rate)
    at = now
end
local allowed = 0
if level >= 1 then
    level = level - 1
    allowed = 1
end
redis.call('HSET', KEYS[1], 'level', string.format('%.17g', level),
    'at', string.format('%.17g', at))
redis.call('PEXPIRE', KEYS[1], math.ceil((burst - level) / rate * 1000) + 1000)
return allowed
"""


class ClaimBudgets(Protocol):
    async def allow(self, key: bytes) -> bool:
        """Spend one claim of ``key`` (token hash + device id) if its budget has one."""

    async def close(self) -> None: ...


class LocalClaimBudgets:
    """The budgets of one node, in memory (bounded: the least recently used go)."""

    def __init__(self, limits: RateLimits, clock: Callable[[], float] = time.monotonic) -> None:
        self._buckets = KeyedBuckets(
            limits.claim_rate, limits.claim_burst, limits.max_tracked_tokens
        )
        self._clock = clock

    def __repr__(self) -> str:
        return f"LocalClaimBudgets({self._buckets!r})"

    async def allow(self, key: bytes) -> bool:
        return self._buckets.allow(key, self._clock())

    async def close(self) -> None:
        pass


class RedisClaimBudgets:
    """The budgets every node shares, in Redis."""

    def __init__(
        self, url: str, limits: RateLimits, clock: Callable[[], float] = time.time
    ) -> None:
        # A Redis that does not answer must not hold a claim past the client's patience.
        self._client = aioredis.Redis.from_url(
            url, socket_timeout=_TIMEOUT, socket_connect_timeout=_TIMEOUT
        )
        self._take = self._client.register_script(_TAKE)
        self._rate = limits.claim_rate
        self._burst = limits.claim_burst
        self._clock = clock

    def __repr__(self) -> str:
        return "RedisClaimBudgets()"

    async def allow(self, key: bytes) -> bool:
        try:
            allowed = await self._take(
                keys=[KEY_PREFIX + key], args=[self._rate, self._burst, self._clock()]
            )
        except RedisError:
            # Closed: without Redis the claim gets the fallback key. The sender can still
            # start a session; the one-time keys wait until the budget can be checked.
            _log.warning("claim budget unavailable (Redis); answering the fallback key")
            return False
        return bool(allowed)

    async def close(self) -> None:
        await self._client.aclose()
