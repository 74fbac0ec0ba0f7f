"""The bus Protocol: tells whoever consumes a mailbox that it has news (DESIGN §7).

It carries "(device_id, seq) has news" and nothing else. The store is the truth: a
subscriber that misses a notification loses nothing, because it catches up by fetching
from the store after its cursor whenever it wakes.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Bus", "Subscription"]


class Subscription(Protocol):
    """News for one device, as seen by one consumer."""

    async def wait(self) -> int:
        """Block until news arrives; returns the highest seq announced so far."""

    def close(self) -> None:
        """Stop receiving; idempotent."""


class Bus(Protocol):
    async def publish(self, device_id: bytes, seq: int) -> None: ...

    def subscribe(self, device_id: bytes) -> Subscription: ...

    async def close(self) -> None: ...
