"""The same result through a proxy that delays, resets and closes connections."""

from __future__ import annotations

import asyncio
import contextlib
import random
import sys
from pathlib import Path

import pytest

from samizdat.client import reach
from samizdat.client.app import Client
from samizdat.transport.dial import TransportOptions
from samizdat.transport.route import Route
from tests.e2e.harness import PASSPHRASE, ServerProcess
from tests.faults.proxy import FaultProxy, Faults
from tests.faults.workload import pair_clients, run_workload


async def test_latency_resets_and_closes_change_nothing(
    server: ServerProcess, tmp_path: Path
) -> None:
    proxy = await FaultProxy(Faults(latency=0.2, jitter=0.15, reset=0.01, close=0.01)).start()
    try:
        transport = TransportOptions(proxy=Route("socks5", proxy.url), transports=("wss",))
        out = await run_workload(
            server, tmp_path, messages=200, kills=2, pairs=10, seed=3, transport=transport
        )
    finally:
        await proxy.close()
    assert out.line() == "sent=200 delivered=200 lost=0 duplicated=0 corrupted=0", out.detail()
    assert (out.unexpected, out.order_violations) == (0, 0), out.detail()
    # The faults really happened (else this test proves nothing).
    assert proxy.counters.resets + proxy.counters.closes >= 5, proxy.counters
    assert proxy.counters.connections > 20, proxy.counters


async def test_connections_cut_after_a_second_cost_the_shortest_pause_each(
    server: ServerProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A network (a NAT, a censor) that lets each connection live a second: ``listen``
    reconnects after the first pause of its backoff every time, since each connection got
    through, instead of waiting longer after every cut of an idle connection."""
    failures_seen: list[int] = []
    real = reach.backoff

    def counted(failures: int, rng: random.Random | None = None) -> float:
        if sys._getframe(1).f_code.co_name == "listen":  # not the outbox's resends
            failures_seen.append(failures)
        return real(failures, rng)

    monkeypatch.setattr(reach, "backoff", counted)
    proxy = await FaultProxy(Faults(latency=0, jitter=0, reset=0, close=0, lifetime=1.0)).start()
    sender, recipient = await pair_clients(tmp_path, server.link, 0, None)
    await recipient.close()
    cut = TransportOptions(proxy=Route("socks5", proxy.url), transports=("wss",))
    recipient = await Client.open(tmp_path / "r0", PASSPHRASE, cut)
    texts: list[str] = []
    three = asyncio.Event()

    async def receive() -> None:
        async with contextlib.aclosing(recipient.listen()) as messages:
            async for message in messages:
                texts.append(message.text)
                if len(texts) == 3:
                    three.set()

    task = asyncio.create_task(receive())
    try:
        await asyncio.sleep(6)  # idle: nothing to deliver while connections are cut
        for i in range(3):
            await sender.send("peer", f"after {i}")
        # Within one cut, a short pause and a reconnection.
        await asyncio.wait_for(three.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.close()
        await recipient.close()
        await proxy.close()
    assert texts == [f"after {i}" for i in range(3)]
    assert len(failures_seen) >= 3 and set(failures_seen) == {1}, failures_seen
