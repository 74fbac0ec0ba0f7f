"""The in-process bus of a single server node (the default)."""

from __future__ import annotations

import asyncio

from samizdat.server.bus.base import Subscription

__all__ = ["LocalBus", "LocalSubscription"]


class LocalSubscription:
    """Announced seqs coalesce into one pending value: one wake-up means "fetch again".

    No queue per subscriber (each idle subscribed connection holds one of these): the
    highest seq announced since the last ``wait`` and, while the consumer waits, a future.
    """

    __slots__ = ("_bus", "_device_id", "_pending", "_waiter", "_closed")

    def __init__(self, bus: LocalBus, device_id: bytes) -> None:
        self._bus = bus
        self._device_id = device_id
        self._pending: int | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"LocalSubscription(pending={int(self._pending is not None)})"

    def notify(self, seq: int) -> None:
        if self._pending is None or seq > self._pending:
            self._pending = seq
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self) -> int:
        while self._pending is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        seq, self._pending = self._pending, None
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

    def __init__(self) -> None:
        self._subscribers: dict[bytes, set[LocalSubscription]] = {}

    def __repr__(self) -> str:
        return f"LocalBus(devices={len(self._subscribers)})"

    async def publish(self, device_id: bytes, seq: int) -> None:
        for subscription in list(self._subscribers.get(device_id, ())):
            subscription.notify(seq)

    def subscribe(self, device_id: bytes) -> Subscription:
        subscription = LocalSubscription(self, device_id)
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
