"""Must show 7: the server adds an endpoint, connected clients receive the new signed
descriptor, then the old endpoint is blocked -> clients reconnect by themselves through
the new one and nothing is lost or duplicated."""

from __future__ import annotations

import asyncio

from samizdat.protocol.descriptor import open_descriptor
from samizdat.transport import TransportOptions
from samizdat.transport.dial import now_ms
from tests.censorship.conftest import World, converse, probe, wait_for
from tests.censorship.net import Middlebox, free_port


def _endpoints(client: object) -> list[str]:
    signed, key = client.own_descriptor()  # type: ignore[attr-defined]
    return [e.url for e in open_descriptor(signed, now_ms(), expected_key=key).endpoints]


async def test_new_endpoint_pushed_then_old_one_blocked(world: World) -> None:
    port = free_port("127.0.0.2")
    old = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    first_link = server.link
    alice, bob = await converse(world, first_link, TransportOptions())
    new_url = f"wss://127.0.0.2:{port}/v1/ws"

    received: list[str] = []

    async def listen_forever() -> None:
        async for message in bob.listen():
            received.append(message.text)

    listener = asyncio.create_task(listen_forever())
    try:
        for i in range(5):
            await alice.send("bob", f"before {i}")
        await wait_for(lambda: len(received) == 5)
        assert new_url not in _endpoints(alice)

        (server.data_dir / "endpoints").write_text(f"{new_url}\n")
        server.hup()
        # Pushed over the open connections (DescriptorUpdate), verified, stored.
        await wait_for(lambda: new_url in _endpoints(bob) and new_url in _endpoints(alice))

        old.block()
        for i in range(5):
            await alice.send("bob", f"after {i}")
        await wait_for(lambda: len(received) == 10, 10)
    finally:
        listener.cancel()
        await asyncio.wait([listener])
    assert received == [f"before {i}" for i in range(5)] + [f"after {i}" for i in range(5)]
    conn = await alice.route()
    assert conn.candidate is not None and conn.candidate.url == new_url
    assert old.resets >= 1

    # A newcomer with the old link (an old invite) is told what is blocked.
    report = await probe(world, first_link, "--doh", "none", ok=False)
    assert "blackhole" in report["blocks"]
    report = await probe(world, server.link, "--doh", "none")
    assert report["ok"] and "blackhole" in report["blocks"]
    assert "to the IP address 127.0.0.2" in report["sentence"]
