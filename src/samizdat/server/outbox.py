"""A bounded FIFO for one connection's outgoing frames: ``asyncio.Queue`` made small.

Every connection has an outbox (session.py), and most connections sit idle with it empty.
``asyncio.Queue`` allocates three deques (~600 B each) per instance and goes through
several layers per item; this keeps one list and creates waiter lists only while someone
waits. Same semantics for what the session uses: ``put`` waits while full (backpressure),
``put_nowait``/``get_nowait`` raise ``asyncio.QueueFull``/``asyncio.QueueEmpty``, and a
cancelled waiter passes its wake-up on, so no item is stranded.

A driver that can send at once (the WebSocket front, server/front.py) attaches a sink
(:meth:`attach`): items then go straight to it, in order, with no task in between. While
the driver has paused the outbox (:meth:`pause`: its transport's write buffer is full)
items queue as before, so ``put`` waits once ``maxsize`` are queued; :meth:`resume`
flushes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Outbox"]

_T = TypeVar("_T")


def _wake_one(waiters: list[asyncio.Future[None]] | None) -> None:
    while waiters:
        waiter = waiters.pop(0)
        if not waiter.done():
            waiter.set_result(None)
            return


class Outbox(Generic[_T]):
    __slots__ = ("_maxsize", "_items", "_getters", "_putters", "_sink", "_paused")

    def __init__(self, maxsize: int) -> None:
        self._maxsize = maxsize
        self._items: list[_T] = []
        self._getters: list[asyncio.Future[None]] | None = None
        self._putters: list[asyncio.Future[None]] | None = None
        self._sink: Callable[[_T], object] | None = None
        self._paused = False

    def __repr__(self) -> str:
        return f"Outbox(size={len(self._items)}, maxsize={self._maxsize})"

    def qsize(self) -> int:
        return len(self._items)

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return len(self._items) >= self._maxsize

    def attach(self, sink: Callable[[_T], object]) -> None:
        """Hand every item to ``sink`` from now on (queued ones first), unless paused."""
        self._sink = sink
        self._flush()

    def pause(self) -> None:
        """Queue items instead of handing them to the sink (the driver cannot send)."""
        self._paused = True

    def resume(self) -> None:
        """Hand the queued items to the sink, and go on doing so directly."""
        self._paused = False
        self._flush()

    def _flush(self) -> None:
        sink = self._sink
        while sink is not None and self._items and not self._paused:
            sink(self._items.pop(0))  # may pause us again
            _wake_one(self._putters)

    def put_nowait(self, item: _T) -> None:
        if self._sink is not None and not self._paused and not self._items:
            self._sink(item)
            return
        if len(self._items) >= self._maxsize:
            raise asyncio.QueueFull
        self._items.append(item)
        _wake_one(self._getters)

    def get_nowait(self) -> _T:
        if not self._items:
            raise asyncio.QueueEmpty
        item = self._items.pop(0)
        _wake_one(self._putters)
        return item

    async def put(self, item: _T) -> None:
        while len(self._items) >= self._maxsize:
            if self._putters is None:
                self._putters = []
            await _wait(self._putters, lambda: len(self._items) < self._maxsize)
        self.put_nowait(item)

    async def get(self) -> _T:
        while not self._items:
            if self._getters is None:
                self._getters = []
            await _wait(self._getters, lambda: bool(self._items))
        return self.get_nowait()


async def _wait(waiters: list[asyncio.Future[None]], ready: Callable[[], bool]) -> None:
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    waiters.append(waiter)
    try:
        await waiter
    except BaseException:
        waiter.cancel()
        if waiter in waiters:
            waiters.remove(waiter)
        elif ready():
            # We were woken but will not take our turn: pass it on.
            _wake_one(waiters)
        raise
