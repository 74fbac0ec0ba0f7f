"""Two nodes on PostgreSQL + Redis: a node SIGKILLed (each of them) and PostgreSQL
"restarted" (every connection cut, tests/faults/cluster.py) while messages flow."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from samizdat.errors import ErrorCode
from samizdat.protocol import frames as f
from samizdat.server.bus.redis import RedisBus
from tests.e2e.raw import RawConnection, RawDevice
from tests.faults.cluster import two_nodes
from tests.faults.workload import run_workload
from tests.server.services import REDIS_URL


async def test_200_messages_through_node_kills_and_a_postgres_restart(tmp_path: Path) -> None:
    async with two_nodes(tmp_path, seed=3) as cluster:
        out = await run_workload(
            cluster.a,
            tmp_path,
            messages=200,
            kills=3,
            pairs=8,
            seed=3,
            inject=cluster.inject,
            links=cluster.links,
        )
        cut = cluster.proxy.cut_connections
    assert out.faults == {"kill node a": 1, "kill node b": 1, "pg restart": 1}, out.faults
    assert cut > 0  # the nodes really lost their database connections
    assert (out.sent, out.delivered) == (200, 200), out.detail()
    assert (out.lost, out.duplicated, out.corrupted, out.unexpected) == (0, 0, 0, 0)
    assert out.order_violations == 0


async def test_a_subscriber_is_closed_not_forgotten_when_the_database_fails(
    tmp_path: Path,
) -> None:
    # A wake-up that arrives while PostgreSQL is down made the delivery task fail
    # silently: the client stayed subscribed to a mailbox nobody delivered from (found
    # by bench/faults.py --nodes 2). Now the connection closes and the client resubscribes.
    async with two_nodes(tmp_path, seed=1) as cluster:
        conn = await RawConnection.open(cluster.a.link)
        device = RawDevice.generate()
        assert isinstance(await conn.register(device), f.AuthOk)
        assert isinstance(await conn.call(f.Subscribe(rid=conn.rid())), f.Ok)
        outage = asyncio.create_task(cluster.proxy.restart(downtime=4.0))
        await asyncio.sleep(0.3)
        other_node = RedisBus(REDIS_URL)  # news of a deposit, as another node sends it
        await other_node.open()
        try:
            await other_node.publish(device.device_id, 1)
            frame = await asyncio.wait_for(conn.recv(), 10)
            assert isinstance(frame, f.Error) and frame.code == ErrorCode.INTERNAL, frame
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(conn.recv(), 10)
        finally:
            await other_node.close()
            await outage
