"""Must show 4: a middlebox resets every TLS connection naming the server (SNI) -> the
client gets through with the IP-literal endpoint, whose ClientHello names nothing."""

from __future__ import annotations

from samizdat.transport import TransportOptions, parse_dns_server
from tests.censorship.conftest import NAME, World, converse, flags, probe
from tests.censorship.net import Middlebox, free_port


async def test_sni_filtering_middlebox(world: World) -> None:
    port = free_port("127.0.0.2")
    # Every path goes through the middlebox: the name resolves to it, and so is the literal.
    box = world.add(
        await Middlebox("127.0.0.4", port, ("127.0.0.2", port), blocked_sni=NAME).start()
    )
    server = await world.server(
        "127.0.0.2", "--public-host", NAME, "--endpoint", f"wss://127.0.0.4:{port}/v1/ws",
        port=port,
    )  # fmt: skip
    dns = await world.dns({NAME: "127.0.0.4"})
    options = TransportOptions(dns_server=parse_dns_server(dns.address))

    alice, _ = await converse(world, server.link, options)

    conn = await alice.route()
    assert conn.candidate is not None and conn.candidate.resolver == "literal"
    assert box.resets >= 1, "the middlebox never saw the server's name"
    assert None in box.seen_sni  # the literal's ClientHello carries no SNI
    report = await probe(world, server.link, *flags(dns))
    assert report["ok"] and "sni_reset" in report["blocks"]
    assert f"TLS connections naming {NAME} are reset (SNI filtering)" in report["sentence"]
