"""The bus Protocol: tells whoever consumes a mailbox that it has news (DESIGN §7).

It carries "(device_id, seq) has news" and, between nodes, "this mailbox has a new
consumer" (so the one-consumer rule holds across nodes); nothing else. The store is the truth: a
subscriber that misses a notification loses nothing, because it catches up by fetching
from the store after its cursor whenever it wakes.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["Bus", "Subscription"]


class Subscription(Protocol):
    """News for one device, as seen by one consumer."""

    async def wait(self) -> int:
        """Block until news arrives (or :attr:`replaced` turns true); returns the highest
        seq announced so far."""

    async def claim(self) -> None:
        """Make this subscription the mailbox's consumer on every node (DESIGN §5).

        Returns once news for the device reaches this subscription, so a fetch after it
        misses nothing. A consumer elsewhere that claimed earlier becomes
        :attr:`replaced`. (Consumers on the same node are ruled by the session's
        ``ConsumerRegistry``.)
        """

    @property
    def replaced(self) -> bool:
        """True once a newer consumer of this mailbox claimed it on another node."""

    def close(self) -> None:
        """Stop receiving; idempotent."""


class Bus(Protocol):
    async def publish(self, device_id: bytes, seq: int) -> None: ...

    def subscribe(self, device_id: bytes) -> Subscription: ...

    async def close(self) -> None: ...
