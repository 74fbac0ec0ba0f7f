"""Switching transport mid-conversation (WebSocket -> long-polling) loses and duplicates
nothing: the outbox with client-chosen message ids, the server's dedupe and the
acknowledged cursor make delivery exactly-once from the user's point of view."""

from __future__ import annotations

import asyncio

from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, converse, wait_for
from tests.censorship.net import Middlebox, NoWebSocketProxy, free_port


async def test_websocket_to_long_polling_mid_conversation(world: World) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    server = await world.server(
        "127.0.0.2", "--public-host", "127.0.0.7", "--endpoint", f"wss://127.0.0.5:{port}/v1/ws",
        port=port,
    )  # fmt: skip
    world.add(
        await NoWebSocketProxy("127.0.0.5", port, server.data_dir, ("127.0.0.2", port)).start()
    )
    alice, bob = await converse(world, server.link, TransportOptions())
    assert (await bob.route()).candidate.transport == "wss"  # type: ignore[union-attr]

    received: list[str] = []

    async def listen_forever() -> None:
        async for message in bob.listen():
            received.append(message.text)

    listener = asyncio.create_task(listen_forever())
    try:
        for i in range(30):
            await alice.send("bob", f"m{i}")
            if i == 12:
                box.block()  # cuts both open WebSockets mid-conversation
        await wait_for(lambda: len(received) >= 30, 15)
        await asyncio.sleep(0.5)  # a duplicate would show up now
    finally:
        listener.cancel()
        await asyncio.wait([listener])
    assert received == [f"m{i}" for i in range(30)]
    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.transport == "poll"
    assert [i.text for i in bob.history("alice")].count("m20") == 1
