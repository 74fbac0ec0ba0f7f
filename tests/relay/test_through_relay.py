"""Must show 1: every direct route is blocked; two clients talk through the relay, and the
bytes the relay forwarded contain none of the words they sent."""

from __future__ import annotations

from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, collect, converse
from tests.censorship.net import Middlebox, free_port
from tests.relay.conftest import start_relay, upstream

MARKERS = [f"relay-marker-{i}-qwertyuiop" for i in range(5)]


async def test_blocked_clients_talk_through_relay(world: World) -> None:
    port = free_port("127.0.0.2")
    box = world.add(await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start())
    box.block()  # the only endpoint in the descriptor: reset, as a censor does
    server = await world.server("127.0.0.2", "--public-host", "127.0.0.7", port=port)
    relay = await start_relay(
        world, "127.0.0.9", free_port("127.0.0.9"),
        "--upstream", upstream(server.link, "127.0.0.2", port),
    )  # fmt: skip
    options = TransportOptions(relays=(relay.link,), stagger=0.1)

    alice, bob = await converse(world, server.link, options)
    for marker in MARKERS:
        await bob.send("alice", marker)
    got = await collect(alice, len(MARKERS), wait=10)
    assert [m.text for m in got] == MARKERS

    for client in (alice, bob):
        conn = await client.route()
        assert conn.candidate is not None and conn.candidate.route.kind == "relay"
        assert any(a.candidate.route.kind == "direct" and a.failure for a in conn.attempts)
    assert box.connections >= 1, "the direct route was never tried"
    stats = await relay.stats()
    assert stats["upstream_connections"] >= 2 and stats["proofs_ok"] >= 2
    forwarded = relay.record.read_bytes()
    assert len(forwarded) > 10_000, "the relay recorded nothing"
    for word in [*MARKERS, "hello through the block", "and back"]:
        assert word.encode() not in forwarded, word
