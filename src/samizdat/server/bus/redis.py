"""The bus between server nodes: Redis pub/sub (DESIGN §7).

Each device has a channel. A message on it says one of two things, and nothing else:

* ``news``: "(device, seq) has news" after a durable deposit on some node;
* ``claim``: a connection on some node now consumes this mailbox (DESIGN §5: one
  consumer at a time). Claims are numbered by ``INCR`` on one Redis key, a global
  order, so when two nodes claim at once the later claim wins on both; a subscription
  whose claim number is older learns it is :attr:`replaced` and its session closes.

Wire format of a message (binary): one kind byte (``n`` or ``c``), the 16-byte id of
the publishing node, then a big-endian u64 (the seq, or the claim number). Messages a
node published itself are ignored on the way back: its own subscribers were told
directly, without the round trip.

One more channel, ``samizdat:cache``, carries cache invalidations between nodes' stores
(:meth:`RedisBus.carry_invalidations`): ``i``, the node id, then the key a write changed
(a token hash or a user key, with a kind byte). The writer publishes after its commit and
before it answers; a node that may have missed one (connection lost) empties its cache and
memoises nothing until Redis confirms its subscription again. :meth:`RedisBus.caught_up`
is the reader's side of that order: a PING on the subscribed connection, whose PONG comes
back after every message Redis published before it, so a memoised answer checked after it
has seen every invalidation committed before the lookup began.

Redis never holds the only copy of anything: a lost message delays a wake-up until the
next one, and after the connection to Redis is lost every local subscriber is woken
(so each re-fetches from the store, the truth).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import struct
from collections import deque
from typing import Any, Final, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from samizdat.errors import LocalError
from samizdat.server.bus.base import Subscription

__all__ = ["RedisBus", "RedisSubscription"]

_log = logging.getLogger(__name__)

QUEUE_SIZE: Final = 16
_PREFIX: Final = b"samizdat:dev:"
_NODE_PREFIX: Final = b"samizdat:node:"
_CLAIMS_KEY: Final = b"samizdat:claims"
_CACHE_CHANNEL: Final = b"samizdat:cache"
_INVALIDATE: Final = b"i"
_HEADER: Final = struct.Struct(">c16s")
_MESSAGE: Final = struct.Struct(">c16sQ")
_NEWS: Final = b"n"
_CLAIM: Final = b"c"
_RECONNECT_DELAY: Final = 0.5
_MAX_PUBLISH_BATCH: Final = 256
#: The PING payload of :meth:`RedisBus.caught_up`, then a number: each PONG answers
#: exactly its PING (redis-py's health checks PING too).
_BARRIER: Final = b"samizdat:caught-up:"


class InvalidatedCache(Protocol):
    """A store's per-node cache (``PostgresStore``), kept true by other nodes' writes."""

    def cache_live(self, live: bool) -> None: ...

    def invalidated(self, key: bytes) -> None: ...


def _channel(device_id: bytes) -> bytes:
    return _PREFIX + device_id


class RedisSubscription:
    """News for one device on this node; also one side of the cross-node consumer rule."""

    def __init__(self, bus: RedisBus, device_id: bytes, size: int) -> None:
        self._bus = bus
        self._device_id = device_id
        self._queue: asyncio.Queue[int] = asyncio.Queue(size)
        self._closed = False
        self._claim: int | None = None
        self._newest_remote_claim = 0

    def __repr__(self) -> str:
        return f"RedisSubscription(pending={self._queue.qsize()}, replaced={self.replaced})"

    @property
    def replaced(self) -> bool:
        return self._claim is not None and self._newest_remote_claim > self._claim

    def notify(self, seq: int) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # one pending wake-up is enough
            self._queue.put_nowait(seq)

    def remote_claim(self, number: int) -> None:
        self._newest_remote_claim = max(self._newest_remote_claim, number)
        if self.replaced:
            self.notify(0)

    async def wait(self) -> int:
        seq = await self._queue.get()
        while not self._queue.empty():
            seq = max(seq, self._queue.get_nowait())
        return seq

    async def claim(self) -> None:
        await self._bus._ready(self._device_id)
        self._claim = await self._bus._announce_claim(self._device_id)
        if self.replaced:
            self.notify(0)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._bus._remove(self._device_id, self)


class RedisBus:
    """:class:`~samizdat.server.bus.base.Bus` shared by every node through one Redis.

    Call :meth:`open` before use. ``url`` is a ``redis://`` URL (never logged).
    """

    def __init__(self, url: str, *, queue_size: int = QUEUE_SIZE) -> None:
        self._url = url
        self._queue_size = queue_size
        self.node_id = secrets.token_bytes(16)
        self._client: Any = None
        self._pubsub: Any = None
        self._subscribers: dict[bytes, set[RedisSubscription]] = {}
        # Futures of SUBSCRIBE commands sent, per channel, in order: Redis confirms in order.
        self._pending: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._ready_futures: dict[bytes, asyncio.Future[None]] = {}
        self._commands: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._outgoing: asyncio.Queue[tuple[bytes, bytes] | None] = asyncio.Queue()
        self._cache: InvalidatedCache | None = None
        # At most one barrier PING in flight (its payload and waiters; new callers join it
        # until the writer has sent it), and the waiters for the next one.
        self._barrier: tuple[bytes, asyncio.Future[bool]] | None = None
        self._barrier_unsent = False
        self._next_barrier: asyncio.Future[bool] | None = None
        #: Barrier PINGs sent so far: for tests and benches.
        self.barriers_sent = 0

    def __repr__(self) -> str:
        return f"RedisBus(devices={len(self._subscribers)})"

    async def open(self) -> None:
        self._client = aioredis.Redis.from_url(self._url)
        try:
            await self._client.ping()
            self._pubsub = self._client.pubsub()
            # A channel of our own keeps the connection subscribed (listen() needs one).
            await self._pubsub.subscribe(_NODE_PREFIX + self.node_id)
        except (RedisError, OSError) as exc:
            await self.close()
            raise LocalError(f"cannot connect to Redis: {type(exc).__name__}") from exc
        self._tasks = [
            asyncio.create_task(self._read(), name="samizdat-redis-read"),
            asyncio.create_task(self._write(), name="samizdat-redis-write"),
            asyncio.create_task(self._publish_batches(), name="samizdat-redis-publish"),
        ]

    async def close(self) -> None:
        if self._tasks:
            # The writer finishes its command first: redis-py can swallow a cancellation
            # that lands in the middle of one.
            reader, writer, publisher = self._tasks
            self._commands.put_nowait(None)
            self._outgoing.put_nowait(None)
            await asyncio.wait([writer, publisher])
            reader.cancel()
            await asyncio.wait([reader])
        self._tasks = []
        for waiting in self._pending.values():
            for future in waiting:
                future.cancel()
        self._pending.clear()
        self._end_barriers()
        self._subscribers.clear()
        if self._pubsub is not None:
            await self._pubsub.aclose()
            self._pubsub = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- Bus ----------------------------------------------------------------------------

    async def publish(self, device_id: bytes, seq: int) -> None:
        for subscription in list(self._subscribers.get(device_id, ())):
            subscription.notify(seq)
        # Sent by the publisher task, many per round trip: the deposit is durable already
        # and the wake-up is only a hint, so the depositor need not wait for Redis.
        self._outgoing.put_nowait((_channel(device_id), _MESSAGE.pack(_NEWS, self.node_id, seq)))

    def subscribe(self, device_id: bytes) -> Subscription:
        subscription = RedisSubscription(self, device_id, self._queue_size)
        subscribers = self._subscribers.setdefault(device_id, set())
        if not subscribers:
            self._send("subscribe", device_id)
        subscribers.add(subscription)
        return subscription

    def carry_invalidations(self, cache: InvalidatedCache) -> None:
        """Tell ``cache`` what other nodes' writes invalidate (call after :meth:`open`).

        The cache goes live once Redis confirms the subscription, and off whenever the
        connection to Redis is lost, until it is confirmed again.
        """
        self._cache = cache
        self._commands.put_nowait(("subscribe", _CACHE_CHANNEL))

    async def invalidate(self, key: bytes) -> None:
        """Tell the other nodes that a committed write changed the answer for ``key``.

        Awaited by the writer before it answers: Redis has then handed the message to
        every subscribed node's connection.
        """
        try:
            await self._client.publish(
                _CACHE_CHANNEL, _HEADER.pack(_INVALIDATE, self.node_id) + key
            )
        except (RedisError, OSError) as exc:
            # A node that lost Redis too has emptied its cache; one that has not forgets
            # the answer within the cache's maximum age.
            _log.warning("bus invalidation failed: %s", type(exc).__name__)

    async def caught_up(self) -> bool:
        """Until this node has handled every message Redis published before the call
        (True), or False if that cannot be known (no connection, or it was lost meanwhile).

        Batched like the store's group commit: one PING in flight; callers that arrive
        before it is written share it, later ones share the next, sent when its PONG is
        back. So a busy node sends at most one per round trip to Redis.
        """
        if not self._tasks:
            return False
        if self._barrier is not None and self._barrier_unsent:
            future = self._barrier[1]
        else:
            if self._next_barrier is None:
                self._next_barrier = asyncio.get_running_loop().create_future()
            future = self._next_barrier
            if self._barrier is None:
                self._send_barrier()
        return await asyncio.shield(future)

    def _send_barrier(self) -> None:
        future, self._next_barrier = self._next_barrier, None
        if future is None:
            return
        self.barriers_sent += 1
        payload = _BARRIER + b"%d" % self.barriers_sent
        self._barrier = (payload, future)
        self._barrier_unsent = True
        self._commands.put_nowait(("ping", payload))

    def _end_barrier(self, payload: bytes, reached: bool) -> None:
        """The PONG for ``payload`` (or its failure); a stale one is ignored."""
        if self._barrier is None or self._barrier[0] != payload:
            return
        future = self._barrier[1]
        self._barrier = None
        if not future.done():
            future.set_result(reached)
        self._send_barrier()

    def _end_barriers(self) -> None:
        """A lost connection: no PONG will come for the PING in flight."""
        for waiting in (self._barrier[1] if self._barrier else None, self._next_barrier):
            if waiting is not None and not waiting.done():
                waiting.set_result(False)
        self._barrier = self._next_barrier = None

    # -- internals ----------------------------------------------------------------------

    def _send(self, command: str, device_id: bytes) -> None:
        channel = _channel(device_id)
        if command == "subscribe":
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._pending.setdefault(channel, deque()).append(future)
            self._ready_futures[device_id] = future
        else:
            self._ready_futures.pop(device_id, None)
        self._commands.put_nowait((command, channel))

    async def _ready(self, device_id: bytes) -> None:
        """Until Redis confirmed our SUBSCRIBE for this device (no news can be missed)."""
        future = self._ready_futures.get(device_id)
        if future is not None:
            await asyncio.shield(future)

    async def _announce_claim(self, device_id: bytes) -> int:
        try:
            number = int(await self._client.incr(_CLAIMS_KEY))
            await self._client.publish(
                _channel(device_id), _MESSAGE.pack(_CLAIM, self.node_id, number)
            )
        except (RedisError, OSError) as exc:
            # Without the claim another node might keep consuming: refuse the Subscribe.
            raise LocalError(f"bus unavailable: {type(exc).__name__}") from None
        return number

    def _remove(self, device_id: bytes, subscription: RedisSubscription) -> None:
        subscribers = self._subscribers.get(device_id)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[device_id]
            if self._tasks:
                self._send("unsubscribe", device_id)

    async def _write(self) -> None:
        # One writer keeps SUBSCRIBE/UNSUBSCRIBE in order, so confirmations match futures.
        while (next_command := await self._commands.get()) is not None:
            command, channel = next_command
            try:
                if command == "ping":
                    # Sent from here, in order with (un)subscribes; later callers need a
                    # PING sent after they began, so they no longer join this one.
                    if self._barrier is not None and self._barrier[0] == channel:
                        self._barrier_unsent = False
                    try:
                        await self._pubsub.ping(channel)
                    except (RedisError, OSError):
                        self._end_barrier(channel, False)
                        raise
                elif command == "subscribe":
                    await self._pubsub.subscribe(channel)
                else:
                    await self._pubsub.unsubscribe(channel)
            except (RedisError, OSError) as exc:
                _log.warning("bus %s failed: %s", command, type(exc).__name__)

    async def _publish_batches(self) -> None:
        while (first := await self._outgoing.get()) is not None:
            batch = [first]
            stop = False
            while not self._outgoing.empty() and len(batch) < _MAX_PUBLISH_BATCH:
                item = self._outgoing.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            try:
                if len(batch) == 1:
                    # A pipeline of one costs ~20 us more CPU than the plain command.
                    await self._client.publish(*batch[0])
                else:
                    async with self._client.pipeline(transaction=False) as pipe:
                        for channel, message in batch:
                            pipe.publish(channel, message)
                        await pipe.execute()
            except (RedisError, OSError) as exc:
                # Consumers elsewhere catch up on their next wake-up (or reconnect).
                _log.warning("bus publish failed: %s", type(exc).__name__)
            if stop:
                return

    async def _read(self) -> None:
        while True:
            try:
                async for message in self._pubsub.listen():
                    self._handle(message)
            except (RedisError, OSError) as exc:
                _log.warning("bus connection lost: %s", type(exc).__name__)
                if self._cache is not None:
                    self._cache.cache_live(False)  # invalidations may be lost meanwhile
                self._end_barriers()
                await asyncio.sleep(_RECONNECT_DELAY)
                # Wake-ups may have been lost meanwhile: everyone re-fetches.
                for subscribers in list(self._subscribers.values()):
                    for subscription in list(subscribers):
                        subscription.notify(0)

    def _handle(self, message: dict[str, Any]) -> None:
        kind, channel = message["type"], message["channel"]
        if kind == "pong":
            self._end_barrier(bytes(message["data"]), True)
            return
        if channel == _CACHE_CHANNEL:
            self._handle_cache(kind, message["data"])
            return
        if kind == "subscribe":
            waiting = self._pending.get(channel)
            if waiting:
                future = waiting.popleft()
                if not future.done():
                    future.set_result(None)
                if not waiting:
                    del self._pending[channel]
            return
        if kind != "message" or not channel.startswith(_PREFIX):
            return
        data = message["data"]
        if len(data) != _MESSAGE.size:
            return
        what, node, number = _MESSAGE.unpack(data)
        if node == self.node_id:
            return
        device_id = channel[len(_PREFIX) :]
        for subscription in list(self._subscribers.get(device_id, ())):
            if what == _NEWS:
                subscription.notify(number)
            elif what == _CLAIM:
                subscription.remote_claim(number)

    def _handle_cache(self, kind: str, data: Any) -> None:
        if self._cache is None:
            return
        if kind == "subscribe":
            # (Re)subscribed: from now on nothing is missed; forget what may have been.
            self._cache.cache_live(True)
        elif kind == "message" and len(data) > _HEADER.size:
            what, node = _HEADER.unpack_from(data)
            if what == _INVALIDATE and node != self.node_id:
                self._cache.invalidated(bytes(data[_HEADER.size :]))
