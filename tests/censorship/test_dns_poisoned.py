"""Must show 2: DNS answers a wrong address serving another certificate -> the pin fails
there, the client moves on, and the impostor never gets more than a TLS ClientHello."""

from __future__ import annotations

from samizdat.client.app import Client
from samizdat.errors import ConnectError
from samizdat.transport import TransportOptions, parse_dns_server
from tests.censorship.conftest import NAME, PASSPHRASE, World, converse, flags, probe
from tests.censorship.net import DohServer, Impostor, free_port


async def test_poisoned_dns_meets_the_pin(world: World) -> None:
    port = free_port("127.0.0.2")
    impostor = world.add(await Impostor("127.0.0.3", port, world.tmp / "impostor").start())
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    dns = await world.dns({NAME: "127.0.0.3"})
    doh = world.add(await DohServer(world.tmp / "doh", {NAME: "127.0.0.2"}).start())
    options = TransportOptions(
        dns_server=parse_dns_server(dns.address), doh=(doh.url,), doh_verify=doh.verify()
    )

    alice, _ = await converse(world, server.link, options)

    conn = await alice.route()
    assert conn.candidate is not None and conn.candidate.resolver == "doh"
    assert impostor.connections >= 1, "the client never tried the poisoned address"
    # The handshake fails on our side (another CA); nothing after the ClientHello.
    assert impostor.app_data == b""
    assert impostor.handshakes == 0
    report = await probe(world, server.link, *flags(dns, doh.url, doh.ca_file))
    assert report["ok"]
    assert {"dns_poisoned", "tls_interception"} <= set(report["blocks"])
    assert (
        f"{NAME} resolves here to 127.0.0.3 but DNS-over-HTTPS says 127.0.0.2"
        in (report["sentence"])
    )
    assert impostor.app_data == b""


async def test_without_another_way_the_pin_refuses(world: World) -> None:
    """No DoH and only the impostor: nothing connects, and the user is told why."""
    port = free_port("127.0.0.2")
    world.add(await Impostor("127.0.0.3", port, world.tmp / "impostor").start())
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    dns = await world.dns({NAME: "127.0.0.3"})
    options = TransportOptions(dns_server=parse_dns_server(dns.address), deadline=5)

    try:
        await Client.create(world.tmp / "alice", PASSPHRASE, server.link, "alice", options)
    except ConnectError as exc:
        assert "pin" in str(exc)
    else:
        raise AssertionError("connected to an impostor")
    report = await probe(world, server.link, *flags(dns), ok=False)
    assert not report["ok"] and "tls_interception" in report["blocks"]
    assert report["sentence"].startswith("Cannot reach the server:")
