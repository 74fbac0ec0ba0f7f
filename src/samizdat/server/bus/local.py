"""The in-process bus of a single server node (the default)."""

from __future__ import annotations

import asyncio
from typing import Final

from samizdat.server.bus.base import Subscription

__all__ = ["LocalBus", "LocalSubscription"]

#: Pending notifications per subscriber. When full, more are dropped: one pending
#: wake-up already makes the consumer fetch everything after its cursor.
QUEUE_SIZE: Final = 16


class LocalSubscription:
    def __init__(self, bus: LocalBus, device_id: bytes, size: int) -> None:
        self._bus = bus
        self._device_id = device_id
        self.queue: asyncio.Queue[int] = asyncio.Queue(size)
        self.dropped = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalSubscription(pending={self.queue.qsize()})"

    def notify(self, seq: int) -> None:
        try:
            self.queue.put_nowait(seq)
        except asyncio.QueueFull:
            self.dropped += 1

    async def wait(self) -> int:
        seq = await self.queue.get()
        # Coalesce: everything queued means the same thing, "fetch again".
        while not self.queue.empty():
            seq = max(seq, self.queue.get_nowait())
        return seq

    async def claim(self) -> None:
        """Nothing to do: one node, and its ConsumerRegistry keeps one consumer."""

    @property
    def replaced(self) -> bool:
        return False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._remove(self._device_id, self)


class LocalBus:
    """:class:`~samizdat.server.bus.base.Bus` for subscribers in this process."""

    def __init__(self, queue_size: int = QUEUE_SIZE) -> None:
        self._queue_size = queue_size
        self._subscribers: dict[bytes, set[LocalSubscription]] = {}

    def __repr__(self) -> str:
        return f"LocalBus(devices={len(self._subscribers)})"

    async def publish(self, device_id: bytes, seq: int) -> None:
        for subscription in list(self._subscribers.get(device_id, ())):
            subscription.notify(seq)

    def subscribe(self, device_id: bytes) -> Subscription:
        subscription = LocalSubscription(self, device_id, self._queue_size)
        self._subscribers.setdefault(device_id, set()).add(subscription)
        return subscription

    def _remove(self, device_id: bytes, subscription: LocalSubscription) -> None:
        subscribers = self._subscribers.get(device_id)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscribers[device_id]

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subscribers.values())

    async def close(self) -> None:
        self._subscribers.clear()
