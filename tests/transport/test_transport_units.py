"""Small pieces of samizdat.transport: parsing, candidate order, SNI in a real ClientHello."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from samizdat.errors import LocalError, StageFailed
from samizdat.protocol.descriptor import Descriptor, Endpoint
from samizdat.transport import (
    TransportOptions,
    candidates,
    parse_dns_server,
    parse_proxy,
    proxy_from_env,
)
from samizdat.transport.resolve import resolve_system
from samizdat.transport.route import DIRECT, open_tcp
from tests.censorship.net import FakeDns, Silent, client_hello_sni


def _descriptor(*urls: str) -> Descriptor:
    return Descriptor(
        server_key=b"k" * 32,
        seq=1,
        endpoints=[Endpoint(url=u) for u in urls],
        tls_ca=b"",
        tls_pin=b"p" * 32,
        issued_at=0,
        expires_at=1,
    )


def test_parse_proxy_and_environment() -> None:
    assert parse_proxy("socks5h://127.0.0.1:9050").url == "socks5://127.0.0.1:9050"
    assert parse_proxy("http://127.0.0.1:3128").kind == "http"
    with pytest.raises(LocalError):
        parse_proxy("ftp://127.0.0.1:21")
    with pytest.raises(LocalError):
        parse_proxy("socks5://127.0.0.1")
    assert proxy_from_env({}) is None
    route = proxy_from_env({"https_proxy": "http://127.0.0.1:8080", "ALL_PROXY": ""})
    assert route is not None and route.label == "http proxy 127.0.0.1:8080"
    assert proxy_from_env({"ALL_PROXY": "socks5://127.0.0.1:1080"}).kind == "socks5"  # type: ignore[union-attr]


def test_parse_dns_server() -> None:
    assert parse_dns_server("127.0.0.1:5353").port == 5353
    assert parse_dns_server("127.0.0.1").port == 53
    with pytest.raises(ValueError):
        parse_dns_server("resolver.example:53")


def test_candidates_order_and_kinds() -> None:
    d = _descriptor("wss://chat.example.test:443/v1/ws", "wss://127.0.0.2:8443/v1/ws")
    plain = candidates(d, TransportOptions())
    assert [(c.transport, c.host, c.resolver) for c in plain] == [
        ("wss", "chat.example.test", "system"),
        ("wss", "127.0.0.2", "literal"),
        ("poll", "chat.example.test", "system"),
        ("poll", "127.0.0.2", "literal"),
    ]
    with_doh = candidates(d, TransportOptions(doh=("https://127.0.0.1/dns-query",)))
    assert [c.resolver for c in with_doh][:3] == ["system", "doh", "literal"]
    proxied = candidates(d, TransportOptions(proxy=parse_proxy("socks5://127.0.0.1:1")))
    assert {c.route.kind for c in proxied} == {"socks5"}
    assert [c.resolver for c in proxied][:2] == ["proxy", "literal"]
    assert len({c.key for c in with_doh}) == len(with_doh)


async def test_sni_parser_reads_a_real_client_hello() -> None:
    seen: list[bytes] = []

    async def grab(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read(65536))
        writer.close()

    server = await asyncio.start_server(grab, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    context = ssl.create_default_context()
    for name in ("chat.example.test", None):
        try:
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname=name or ""
            )
        except (ssl.SSLError, OSError):
            pass
        else:  # pragma: no cover - the grabber never completes a handshake
            writer.close()
    server.close()
    await server.wait_closed()
    assert [client_hello_sni(data) for data in seen] == ["chat.example.test", None]


async def test_stage_failures_are_named() -> None:
    dns = await FakeDns({"gone.example.test": None}).start()
    try:
        with pytest.raises(StageFailed) as info:
            await resolve_system("gone.example.test", parse_dns_server(dns.address), 2)
        assert (info.value.stage, info.value.kind) == ("dns", "nxdomain")
    finally:
        await dns.close()
    silent = await Silent("127.0.0.3").start()
    await silent.close()
    with pytest.raises(StageFailed) as info:
        await open_tcp(DIRECT, "127.0.0.3", silent.port, 2)
    assert (info.value.stage, info.value.kind) == ("tcp", "refused")
