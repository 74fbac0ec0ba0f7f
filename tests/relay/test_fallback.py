"""Must show 4: with a direct route and a relay, the client uses the direct one; when the
direct one is cut mid-session it continues through the relay, losing nothing."""

from __future__ import annotations

import asyncio

from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, converse, wait_for
from tests.censorship.net import Middlebox, free_port
from tests.relay.conftest import start_relay, upstream


async def test_direct_first_then_relay_mid_session(world: World) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", port),
    )  # fmt: skip
    options = TransportOptions(relays=(relay.link,), stagger=0.1)
    alice, bob = await converse(world, server.link, options)
    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.route.kind == "direct"
    assert (await relay.stats())["upstream_connections"] == 0, "relay used while direct works"

    received: list[str] = []

    async def listen_forever() -> None:
        async for message in bob.listen():
            received.append(message.text)

    listener = asyncio.create_task(listen_forever())
    try:
        for i in range(30):
            await alice.send("bob", f"m{i}")
            if i == 12:
                box.block()  # the censor starts resetting the direct route, open ones too
        await wait_for(lambda: len(received) >= 30, 20)
        await asyncio.sleep(0.5)  # a duplicate would show up now
    finally:
        listener.cancel()
        await asyncio.wait([listener])
    assert received == [f"m{i}" for i in range(30)]
    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.route.kind == "relay"
    assert [i.text for i in bob.history("alice")].count("m20") == 1
    assert (await relay.stats())["upstream_connections"] >= 2
