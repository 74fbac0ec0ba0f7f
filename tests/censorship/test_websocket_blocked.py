"""Must show 5: WebSocket upgrades are refused on the way, plain HTTPS passes ->
HTTPS long-polling carries the whole conversation."""

from __future__ import annotations

import asyncio

from samizdat.transport import TransportOptions
from tests.censorship.conftest import BOUND, World, collect, converse, probe
from tests.censorship.net import NoWebSocketProxy, free_port


async def test_long_polling_when_websockets_are_refused(world: World) -> None:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.5", port=port)
    proxy = world.add(
        await NoWebSocketProxy("127.0.0.5", port, server.data_dir, ("127.0.0.2", port)).start()
    )

    alice, bob = await converse(world, server.link, TransportOptions())

    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.transport == "poll"
    assert proxy.refused >= 1 and proxy.passed >= 4
    # Idle longer than the server's HTTP keep-alive (5 s): the same session carries on.
    # A request written onto a keep-alive connection the server closed meanwhile is sent
    # again on a new one (the proxy keeps our side open): no reconnect, for either side.
    before = [await alice.route(), await bob.route()]
    await asyncio.sleep(6)
    await bob.send("alice", "after a pause")
    assert [m.text for m in await collect(alice, 1, wait=BOUND)] == ["after a pause"]
    assert [await alice.route(), await bob.route()] == before
    report = await probe(world, server.link, "--doh", "none")
    assert report["ok"] and report["blocks"] == ["websocket_blocked"]
    assert report["sentence"] == (
        "WebSocket upgrades are refused or cut on the way: connected over HTTPS "
        f"long-polling to the IP address 127.0.0.5 in {report['sentence'].split(' in ')[-1]}"
    )
