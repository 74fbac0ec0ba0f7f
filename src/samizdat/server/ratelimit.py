"""Token-bucket rate limits, per connection and per delivery token (DESIGN §5).

No I/O and no clock of its own: ``now`` (seconds, monotonic) is an argument, so the
buckets can be tested exhaustively.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

__all__ = ["RateLimits", "TokenBucket", "KeyedBuckets"]


@dataclass(frozen=True)
class RateLimits:
    """Generous defaults: a flood is cut, an honest client never notices."""

    #: Frames per second one connection may send, and the burst it may save up.
    connection_rate: float = 100.0
    connection_burst: float = 400.0
    #: Deposits and key claims per second under one delivery token.
    token_rate: float = 20.0
    token_burst: float = 200.0
    #: One-time key claims per (delivery token, device), per second and burst: beyond
    #: this budget the claim is answered with the device's fallback key, so that one
    #: requester cannot drain a device's one-time keys (docs/security.md).
    claim_rate: float = 10 / 3600
    claim_burst: float = 10.0
    #: Most per-token buckets remembered; the least recently used are forgotten.
    max_tracked_tokens: int = 100_000


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    __slots__ = ("rate", "burst", "_level", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._level = burst
        self._at = now

    def __repr__(self) -> str:
        return f"TokenBucket(rate={self.rate}, burst={self.burst}, level={self._level:.1f})"

    @property
    def level(self) -> float:
        return self._level

    def allow(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if there are that many; a clock going back adds nothing."""
        if now > self._at:
            self._level = min(self.burst, self._level + (now - self._at) * self.rate)
            self._at = now
        if self._level >= cost:
            self._level -= cost
            return True
        return False


class KeyedBuckets:
    """One bucket per key (a token's hash), bounded in number (LRU)."""

    def __init__(self, rate: float, burst: float, max_keys: int) -> None:
        self._rate = rate
        self._burst = burst
        self._max_keys = max_keys
        self._buckets: OrderedDict[bytes, TokenBucket] = OrderedDict()

    def __repr__(self) -> str:
        return f"KeyedBuckets(keys={len(self._buckets)})"

    def __len__(self) -> int:
        return len(self._buckets)

    def allow(self, key: bytes, now: float, cost: float = 1.0) -> bool:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
            while len(self._buckets) > self._max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.allow(now, cost)
