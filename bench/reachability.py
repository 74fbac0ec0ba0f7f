"""Time to the first successful hello under each simulated block (loopback only).

    .venv/bin/python bench/reachability.py [--runs 7]

For each scenario of tests/censorship/ this starts a real server process and the hostile
network pieces, then dials the server from scratch (no remembered route) ``--runs`` times
and prints the median and worst time from the first attempt to a verified ``welcome``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samizdat.protocol.descriptor import open_descriptor  # noqa: E402
from samizdat.protocol.links import decode_server_link  # noqa: E402
from samizdat.transport import (  # noqa: E402
    TransportOptions,
    dial,
    parse_dns_server,
    parse_proxy,
)
from samizdat.transport.dial import now_ms  # noqa: E402
from tests.censorship.net import (  # noqa: E402
    DohServer,
    FakeDns,
    HttpConnectProxy,
    Impostor,
    Middlebox,
    NoWebSocketProxy,
    ServerProc,
    Silent,
    Socks5Proxy,
    free_port,
)

NAME = "chat.example.test"
Setup = Callable[[Path, list[Any]], Awaitable[tuple[ServerProc, TransportOptions]]]


async def _server(tmp: Path, port: int, *args: str) -> ServerProc:
    return await ServerProc(tmp / "server", "127.0.0.2", port, *args).start()


async def baseline(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    return await _server(tmp, free_port("127.0.0.2")), TransportOptions()


async def nxdomain(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    port = free_port("127.0.0.2")
    server = await _server(tmp, port, "--public-host", NAME)
    dns = await FakeDns({NAME: None}).start()
    doh = await DohServer(tmp / "doh", {NAME: "127.0.0.2"}).start()
    things += [dns, doh]
    options = TransportOptions(
        dns_server=parse_dns_server(dns.address), doh=(doh.url,), doh_verify=doh.verify()
    )
    return server, options


async def poisoned(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    port = free_port("127.0.0.2")
    things.append(await Impostor("127.0.0.3", port, tmp / "impostor").start())
    server = await _server(tmp, port, "--public-host", NAME)
    dns = await FakeDns({NAME: "127.0.0.3"}).start()
    doh = await DohServer(tmp / "doh", {NAME: "127.0.0.2"}).start()
    things += [dns, doh]
    options = TransportOptions(
        dns_server=parse_dns_server(dns.address), doh=(doh.url,), doh_verify=doh.verify()
    )
    return server, options


async def silent(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    port = free_port("127.0.0.2")
    things.append(await Silent("127.0.0.3", port).start())
    server = await _server(
        tmp, port, "--public-host", NAME, "--endpoint", f"wss://127.0.0.2:{port}/v1/ws"
    )
    dns = await FakeDns({NAME: "127.0.0.3"}).start()
    things.append(dns)
    return server, TransportOptions(dns_server=parse_dns_server(dns.address))


async def sni(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    port = free_port("127.0.0.2")
    things.append(await Middlebox("127.0.0.4", port, ("127.0.0.2", port), blocked_sni=NAME).start())
    server = await _server(
        tmp, port, "--public-host", NAME, "--endpoint", f"wss://127.0.0.4:{port}/v1/ws"
    )
    dns = await FakeDns({NAME: "127.0.0.4"}).start()
    things.append(dns)
    return server, TransportOptions(dns_server=parse_dns_server(dns.address))


async def no_websocket(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    port = free_port("127.0.0.2")
    server = await _server(tmp, port, "--public-host", "127.0.0.5")
    things.append(
        await NoWebSocketProxy("127.0.0.5", port, server.data_dir, ("127.0.0.2", port)).start()
    )
    return server, TransportOptions()


def _proxy(kind: str) -> Setup:
    async def setup(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
        port = free_port("127.0.0.2")
        server = await _server(tmp, port, "--public-host", NAME)
        dns = await FakeDns({NAME: None}).start()
        cls = Socks5Proxy if kind == "socks5" else HttpConnectProxy
        proxy = await cls("127.0.0.6", {NAME: "127.0.0.2"}).start()
        things += [dns, proxy]
        options = TransportOptions(
            dns_server=parse_dns_server(dns.address), proxy=parse_proxy(proxy.url)
        )
        return server, options

    return setup


async def moved(tmp: Path, things: list[Any]) -> tuple[ServerProc, TransportOptions]:
    """The old endpoint (first in the descriptor) resets everything; the new one works."""
    port = free_port("127.0.0.2")
    old = await Middlebox("127.0.0.7", port, ("127.0.0.2", port)).start()
    old.block()
    things.append(old)
    server = await _server(
        tmp, port, "--public-host", "127.0.0.7", "--endpoint", f"wss://127.0.0.2:{port}/v1/ws"
    )
    return server, TransportOptions()


SCENARIOS: dict[str, Setup] = {
    "no block (baseline)": baseline,
    "1 NXDOMAIN -> DoH": nxdomain,
    "2 poisoned DNS + impostor -> DoH": poisoned,
    "3 silent primary -> next endpoint": silent,
    "4 SNI reset -> IP literal": sni,
    "5 WebSocket refused -> long-poll": no_websocket,
    "6a only SOCKS5": _proxy("socks5"),
    "6b only HTTP CONNECT": _proxy("http"),
    "7 old endpoint blocked -> new one": moved,
}


async def measure(setup: Setup, runs: int) -> tuple[list[float], str]:
    things: list[Any] = []
    with tempfile.TemporaryDirectory() as folder:
        server, options = await setup(Path(folder), things)
        try:
            signed = decode_server_link(server.link).descriptor
            key = open_descriptor(signed, now_ms()).server_key
            times: list[float] = []
            label = ""
            for _ in range(runs):
                dialed = await dial(signed, key, options)
                times.append(dialed.ms)
                label = dialed.candidate.label
                await dialed.channel.close()
            return times, label
        finally:
            for thing in reversed(things):
                await thing.close()
            await server.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"time to first successful hello, {args.runs} fresh dials each (ms)")
    print(f"{'scenario':36} {'median':>8} {'worst':>8}  winner")
    for name, setup in SCENARIOS.items():
        times, label = await measure(setup, args.runs)
        print(f"{name:36} {statistics.median(times):8.1f} {max(times):8.1f}  {label}")


if __name__ == "__main__":
    asyncio.run(main())
