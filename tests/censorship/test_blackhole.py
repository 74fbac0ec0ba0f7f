"""Must show 3: the primary endpoint never answers -> another endpoint of the descriptor."""

from __future__ import annotations

from samizdat.transport import TransportOptions, parse_dns_server
from tests.censorship.conftest import NAME, World, converse, flags, probe
from tests.censorship.net import Silent, free_port


async def test_silent_primary_endpoint(world: World) -> None:
    port = free_port("127.0.0.2")
    silent = world.add(await Silent("127.0.0.3", port).start())
    server = await world.server(
        "127.0.0.2", "--public-host", NAME, "--endpoint", f"wss://127.0.0.2:{port}/v1/ws",
        port=port,
    )  # fmt: skip
    dns = await world.dns({NAME: "127.0.0.3"})
    options = TransportOptions(dns_server=parse_dns_server(dns.address))

    alice, _ = await converse(world, server.link, options)

    conn = await alice.route()
    assert conn.candidate is not None
    assert (conn.candidate.host, conn.candidate.transport) == ("127.0.0.2", "wss")
    assert silent.connections >= 1, "the primary endpoint was never tried"
    report = await probe(world, server.link, *flags(dns))
    assert report["ok"] and "blackhole" in report["blocks"]
    assert f"{NAME} (127.0.0.3) does not answer (blackholed)" in report["sentence"]
    assert "to the IP address 127.0.0.2" in report["sentence"]
