"""Must show 1: the system resolver answers NXDOMAIN for the server's name -> DoH gets through."""

from __future__ import annotations

from samizdat.transport import TransportOptions, parse_dns_server
from tests.censorship.conftest import NAME, World, converse, flags, probe
from tests.censorship.net import DohServer, free_port


async def test_nxdomain_then_dns_over_https(world: World) -> None:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    dns = await world.dns({NAME: None})
    doh = world.add(await DohServer(world.tmp / "doh", {NAME: "127.0.0.2"}).start())
    options = TransportOptions(
        dns_server=parse_dns_server(dns.address), doh=(doh.url,), doh_verify=doh.verify()
    )

    alice, _ = await converse(world, server.link, options)

    conn = await alice.route()
    assert conn.candidate is not None
    assert (conn.candidate.resolver, conn.candidate.transport) == ("doh", "wss")
    assert NAME in dns.queries and NAME in doh.queries
    report = await probe(world, server.link, *flags(dns, doh.url, doh.ca_file))
    assert report["ok"] and "dns_nxdomain" in report["blocks"]
    assert report["sentence"].startswith(
        f"{NAME} does not resolve here (NXDOMAIN), but DNS-over-HTTPS gives 127.0.0.2"
    )
