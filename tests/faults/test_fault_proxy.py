"""The same result through a proxy that delays, resets and closes connections."""

from __future__ import annotations

from pathlib import Path

from samizdat.transport.dial import TransportOptions
from samizdat.transport.route import Route
from tests.e2e.harness import ServerProcess
from tests.faults.proxy import FaultProxy, Faults
from tests.faults.workload import run_workload


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
