"""Must show 6: no direct route at all, only a SOCKS5 proxy (and separately only an HTTP
CONNECT proxy) -> everything goes through it, the name resolved by the proxy."""

from __future__ import annotations

import pytest

from samizdat.transport import TransportOptions, parse_dns_server, parse_proxy
from tests.censorship.conftest import NAME, World, converse, flags, probe
from tests.censorship.net import HttpConnectProxy, Socks5Proxy, free_port


@pytest.mark.parametrize("kind", ["socks5", "http"])
async def test_only_a_proxy_gets_out(world: World, kind: str) -> None:
    port = free_port("127.0.0.2")
    server = await world.server("127.0.0.2", "--public-host", NAME, port=port)
    # Here the name does not resolve at all; beyond the proxy it does.
    dns = await world.dns({NAME: None})
    hosts = {NAME: "127.0.0.2"}
    proxy = world.add(
        await (Socks5Proxy if kind == "socks5" else HttpConnectProxy)("127.0.0.6", hosts).start()
    )
    options = TransportOptions(
        dns_server=parse_dns_server(dns.address), proxy=parse_proxy(proxy.url)
    )

    alice, _ = await converse(world, server.link, options)

    conn = await alice.route()
    assert conn.candidate is not None and conn.candidate.route.kind == kind
    assert f"{NAME}:{port}" in proxy.targets  # the name went to the proxy unresolved
    report = await probe(world, server.link, "--proxy", proxy.url, *flags(dns))
    assert report["ok"] and {"dns_nxdomain", "direct_blocked"} <= set(report["blocks"])
    assert f"through the {kind} proxy 127.0.0.6:{proxy.port}" in report["sentence"]
