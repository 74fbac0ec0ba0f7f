"""The Redis bus: news and consumer claims between nodes (two buses = two nodes).

Needs Redis at REDIS_URL (and PostgreSQL for the two-server test): their absence fails.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from websockets.exceptions import ConnectionClosed

from samizdat.errors import LocalError
from samizdat.protocol import frames as f
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.server.bus.redis import RedisBus
from samizdat.server.store.postgres import PostgresStore

from .helpers import Device, FrameClient, token_hash
from .services import PG_DSN, REDIS_URL, drop_pg_schema
from .test_session import env, recv_deliveries, setup_user


@pytest.fixture
async def two_buses() -> AsyncIterator[tuple[RedisBus, RedisBus]]:
    a, b = RedisBus(REDIS_URL), RedisBus(REDIS_URL)
    await a.open()
    try:
        await b.open()
        try:
            yield a, b
        finally:
            await b.close()
    finally:
        await a.close()


async def test_news_crosses_nodes_for_that_device_only(
    two_buses: tuple[RedisBus, RedisBus],
) -> None:
    a, b = two_buses
    dev, other = os.urandom(16), os.urandom(16)
    sub = b.subscribe(dev)
    await sub.claim()  # also: subscribed at Redis before it returns
    quiet = b.subscribe(other)
    await quiet.claim()
    await a.publish(dev, 7)
    assert await asyncio.wait_for(sub.wait(), 5) == 7
    waiter = asyncio.create_task(quiet.wait())
    await asyncio.sleep(0.1)
    assert not waiter.done()
    waiter.cancel()
    sub.close()
    quiet.close()
    sub.close()


async def test_local_news_is_told_once(two_buses: tuple[RedisBus, RedisBus]) -> None:
    a, _ = two_buses
    dev = os.urandom(16)
    sub = a.subscribe(dev)
    await sub.claim()
    await a.publish(dev, 1)
    assert await asyncio.wait_for(sub.wait(), 5) == 1
    # Our own message comes back from Redis and must be ignored, not a second wake-up.
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0.1)
    assert not waiter.done()
    waiter.cancel()
    sub.close()


async def test_newer_claim_on_another_node_replaces(two_buses: tuple[RedisBus, RedisBus]) -> None:
    a, b = two_buses
    dev = os.urandom(16)
    old = a.subscribe(dev)
    await old.claim()
    new = b.subscribe(dev)
    await new.claim()
    # The old consumer wakes up and sees it lost the mailbox; the new one keeps it.
    await asyncio.wait_for(old.wait(), 5)
    assert old.replaced and not new.replaced
    await a.publish(dev, 3)
    assert await asyncio.wait_for(new.wait(), 5) == 3
    assert not new.replaced
    assert "replaced=False" in repr(new) and dev.hex() not in repr(new)
    old.close()
    new.close()


async def test_unreachable_redis_fails_loudly() -> None:
    bus = RedisBus("redis://127.0.0.1:1/0")
    with pytest.raises(LocalError):
        await bus.open()


@dataclass
class Cluster:
    a: RunningServer
    b: RunningServer
    store_url: str


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Two server nodes in this process sharing one PostgreSQL schema and Redis."""
    schema = f"t_{secrets.token_hex(8)}"
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
    finally:
        await conn.close()
    url = f"{PG_DSN}?search_path={schema}"
    identity = tmp_path / "identity"

    def node(name: str) -> ServerConfig:
        return ServerConfig(
            data_dir=tmp_path / name,
            identity_dir=identity,
            store_url=url,
            bus_url=REDIS_URL,
            print_link=False,
        )

    try:
        a = await start(node("a"))
        try:
            b = await start(node("b"))
            try:
                yield Cluster(a, b, url)
            finally:
                await b.stop()
        finally:
            await a.stop()
    finally:
        await drop_pg_schema(schema)


async def test_cluster_shares_identity_store_and_wakeups(cluster: Cluster) -> None:
    assert cluster.a.identity.server_key == cluster.b.identity.server_key
    assert isinstance(cluster.a.store, PostgresStore)
    async with FrameClient(cluster.a.link) as on_a, FrameClient(cluster.b.link) as on_b:
        await on_a.hello()
        await on_b.hello()
        user, token = await setup_user(on_a)
        device = user.devices[0]
        assert isinstance(await on_a.request(f.Subscribe(rid=on_a.rid())), f.Ok)
        # A deposit on node B is pushed by node A: the bus woke it.
        ok = await on_b.request(f.Deposit(rid=on_b.rid(), token=token, envelopes=[env(device, 1)]))
        assert isinstance(ok, f.DepositOk) and ok.stored == 1
        (entry,) = await recv_deliveries(on_a, 1)
        assert entry.seq == 1


async def test_subscribe_on_another_node_replaces_the_consumer(cluster: Cluster) -> None:
    async with FrameClient(cluster.a.link) as old, FrameClient(cluster.b.link) as new:
        await old.hello()
        await new.hello()
        user, token = await setup_user(old)
        device = user.devices[0]
        assert isinstance(await old.request(f.Subscribe(rid=old.rid())), f.Ok)
        await new.request(
            f.Auth(
                rid=new.rid(),
                device_id=device.device_id,
                proof=device.proof(new.descriptor.server_key, new.nonce),
            )
        )
        assert isinstance(await new.request(f.Subscribe(rid=new.rid())), f.Ok)
        replaced = await asyncio.wait_for(old.recv(), 5)
        assert isinstance(replaced, f.Error) and replaced.code == "replaced"
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(old.recv(), 5)
        # The new consumer on node B gets a deposit made on node A's store view.
        await new.request(f.Deposit(rid=new.rid(), token=token, envelopes=[env(device, 9)]))
        (entry,) = await recv_deliveries(new, 1)
        assert entry.msg_id == (9).to_bytes(16, "big")


async def _deposit(c: FrameClient, token: bytes, device: Device, n: int) -> f.ServerFrame:
    return await c.request(f.Deposit(rid=c.rid(), token=token, envelopes=[env(device, n)]))


async def _cache_live(server: RunningServer) -> None:
    store = server.store
    assert isinstance(store, PostgresStore)
    for _ in range(100):  # live once Redis confirms the invalidation channel
        if store._cache_live:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("node B's cache never went live")


async def test_a_revoked_token_is_refused_by_the_other_node_next(cluster: Cluster) -> None:
    await _cache_live(cluster.b)
    async with FrameClient(cluster.a.link) as on_a, FrameClient(cluster.b.link) as on_b:
        await on_a.hello()
        await on_b.hello()
        user, token = await setup_user(on_a)
        device = user.devices[0]
        # Node B answers "whose token is this?" from its cache from now on ...
        assert isinstance(await _deposit(on_b, token, device, 1), f.DepositOk)
        store_b = cluster.b.store
        assert isinstance(store_b, PostgresStore)
        assert store_b._token_users.get(token_hash(token)) == user.user_key
        # ... until node A revokes it: the very next deposit on B is refused.
        assert isinstance(await on_a.request(f.RevokeToken(rid=on_a.rid(), token=token)), f.Ok)
        await on_b.expect_error(
            f.Deposit(rid=on_b.rid(), token=token, envelopes=[env(device, 2)]), "bad_token"
        )


async def test_a_changed_device_list_is_seen_by_the_other_node_next(cluster: Cluster) -> None:
    await _cache_live(cluster.b)
    async with FrameClient(cluster.a.link) as on_a, FrameClient(cluster.b.link) as on_b:
        await on_a.hello()
        await on_b.hello()
        user, token = await setup_user(on_a, n_devices=2)
        first, second = user.devices
        assert isinstance(await _deposit(on_b, token, first, 1), f.DepositOk)
        # B has memoised the user's devices: only the first is registered yet.
        await on_b.expect_error(
            f.Deposit(rid=on_b.rid(), token=token, envelopes=[env(second, 2)]), "unknown_device"
        )
        async with FrameClient(cluster.a.link) as second_on_a:
            await second_on_a.hello()
            await second_on_a.register(user, second)
        # Registered on A: B's next deposit to it is accepted.
        ok = await _deposit(on_b, token, second, 3)
        assert isinstance(ok, f.DepositOk) and ok.stored == 1


class CuttableProxy:
    """A TCP forwarder to Redis on loopback whose connections the test can reset."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [writer, up_writer]

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def cut(self) -> None:
        """Reset every open connection (what a flaky network or a Redis restart does)."""
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


async def test_lost_redis_connection_wakes_everyone_and_recovers() -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(port)
    await proxy.start()
    a, b = RedisBus(REDIS_URL), RedisBus(f"redis://127.0.0.1:{proxy.port}/0")
    await a.open()
    await b.open()
    try:
        dev = os.urandom(16)
        sub = b.subscribe(dev)
        await sub.claim()
        proxy.cut()
        # News published while B was cut off is lost on the bus: B wakes its consumers so
        # they re-fetch from the store, the truth.
        assert await asyncio.wait_for(sub.wait(), 10) == 0  # a wake-up, not news
        # Once reconnected (and resubscribed), news from another node arrives again.
        deadline = asyncio.get_running_loop().time() + 10
        while True:
            await a.publish(dev, 5)
            try:
                seq = await asyncio.wait_for(sub.wait(), 0.5)
            except TimeoutError:
                assert asyncio.get_running_loop().time() < deadline, "bus never recovered"
                continue
            if seq == 5:
                break
        sub.close()
    finally:
        await b.close()
        await a.close()
        await proxy.close()


class CacheLog:
    """What a bus tells a node's cache (the ``InvalidatedCache`` side of a store)."""

    def __init__(self) -> None:
        self.live: list[bool] = []
        self.keys: list[bytes] = []

    def cache_live(self, live: bool) -> None:
        self.live.append(live)

    def invalidated(self, key: bytes) -> None:
        self.keys.append(key)


async def _until(condition: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(what)


async def test_invalidations_cross_nodes_and_a_lost_connection_turns_the_cache_off() -> None:
    port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
    proxy = CuttableProxy(port)
    await proxy.start()
    a, b = RedisBus(REDIS_URL), RedisBus(f"redis://127.0.0.1:{proxy.port}/0")
    await a.open()
    await b.open()
    log_a, log_b = CacheLog(), CacheLog()
    try:
        a.carry_invalidations(log_a)
        b.carry_invalidations(log_b)
        await _until(lambda: log_a.live == [True] and log_b.live == [True], "never went live")
        await a.invalidate(b"t" + b"x" * 32)
        await _until(lambda: log_b.keys == [b"t" + b"x" * 32], "invalidation not heard")
        assert log_a.keys == []  # a node's own writes are forgotten locally, not echoed
        proxy.cut()
        await _until(lambda: log_b.live[-1:] == [False], "cache stayed on without Redis")
        # Resubscribed: live again (and the cache was emptied on the way).
        await _until(lambda: log_b.live[-1:] == [True], "cache never came back")
    finally:
        await b.close()
        await a.close()
        await proxy.close()
