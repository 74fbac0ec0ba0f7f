"""A conversation through a samizdat relay against the direct route, and relay memory.

    .venv/bin/python bench/relay.py [--messages 300] [--rounds 50] [--tunnels 200]

Real processes on loopback: one ``samizdat server`` and one ``samizdat relay``. Two pairs
of real clients talk: one pair directly, one pair whose only endpoint refuses connections
so that the relay is their route. Measured for each pair:

* **latency**: Bob sends one message, Alice (listening) receives it; median and p90 of
  ``--rounds`` rounds, send call to arrival;
* **throughput**: Bob sends ``--messages`` messages one after another (each acknowledged
  as durable), Alice receives them all; messages per second, first send to last arrival.

Then ``--tunnels`` idle TLS-in-TLS tunnels are opened through the relay and the relay
process's resident memory before and after gives the memory per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openloop import rss_kib  # noqa: E402
from samizdat.client.app import Client  # noqa: E402
from samizdat.protocol.descriptor import open_descriptor  # noqa: E402
from samizdat.protocol.links import decode_server_link  # noqa: E402
from samizdat.transport import TransportOptions  # noqa: E402
from samizdat.transport.dial import now_ms  # noqa: E402
from samizdat.transport.relay import open_relay, tls_over  # noqa: E402
from samizdat.transport.tls import Stream, server_context  # noqa: E402
from tests.censorship.net import ServerProc, free_port  # noqa: E402
from tests.relay.conftest import RelayProc  # noqa: E402

PASS = "bench passphrase"


async def _pair(tmp: Path, tag: str, link: str, options: TransportOptions) -> tuple[Client, Client]:
    alice = await Client.create(tmp / f"alice-{tag}", PASS, link, "alice", options)
    bob = await Client.create(tmp / f"bob-{tag}", PASS, link, "bob", options)
    await bob.add_contact(await alice.invite(), "alice")
    await bob.send("alice", "hi")
    async for _ in alice.listen(count=1, timeout=10):
        pass
    return alice, bob


async def _measure(alice: Client, bob: Client, rounds: int, messages: int) -> dict[str, float]:
    arrived: asyncio.Queue[tuple[str, float]] = asyncio.Queue()

    async def listen() -> None:
        async for m in alice.listen():
            arrived.put_nowait((m.text, time.perf_counter()))

    task = asyncio.create_task(listen())
    await asyncio.sleep(0.3)
    try:
        lat: list[float] = []
        for i in range(rounds):
            start = time.perf_counter()
            await bob.send("alice", f"ping {i}")
            while (got := await asyncio.wait_for(arrived.get(), 10))[0] != f"ping {i}":
                pass
            lat.append((got[1] - start) * 1000)
        start = time.perf_counter()
        for i in range(messages):
            await bob.send("alice", f"bulk {i}")
        last = 0.0
        for _ in range(messages):
            last = (await asyncio.wait_for(arrived.get(), 30))[1]
        rate = messages / (last - start)
    finally:
        task.cancel()
        await asyncio.wait([task])
    return {
        "p50_ms": statistics.median(lat),
        "p90_ms": statistics.quantiles(lat, n=10)[-1],
        "msgs_per_s": rate,
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        port = free_port("127.0.0.2")
        fast = ("--token-rate", "100000", "--connection-rate", "100000")  # no rate limits
        direct_srv = await ServerProc(tmp / "direct", "127.0.0.2", port, *fast).start()
        port2 = free_port("127.0.0.3")
        # Its descriptor names 127.0.0.8, where nothing listens: only the relay works.
        relayed_srv = await ServerProc(
            tmp / "relayed", "127.0.0.3", port2, "--public-host", "127.0.0.8", *fast
        ).start()
        relay = RelayProc(
            tmp / "relay", "127.0.0.9", free_port("127.0.0.9"),
            "--upstream", f"{relayed_srv.link}=127.0.0.3:{port2}", "--max-connections", "4096",
            "--address-rate", "100000", record=False,
        )  # fmt: skip
        await relay.start()
        clients: list[Client] = []
        try:
            pair = await _pair(tmp, "d", direct_srv.link, TransportOptions())
            clients += pair
            direct = await _measure(*pair, args.rounds, args.messages)
            options = TransportOptions(relays=(relay.link,), stagger=0.05)
            pair = await _pair(tmp, "r", relayed_srv.link, options)
            clients += pair
            assert (await pair[0].route()).candidate.route.kind == "relay"  # type: ignore[union-attr]
            relayed = await _measure(*pair, args.rounds, args.messages)
            for name, figures in (("direct", direct), ("relay", relayed)):
                print(
                    f"{name:7} latency p50 {figures['p50_ms']:.1f} ms"
                    f"  p90 {figures['p90_ms']:.1f} ms"
                    f"  throughput {figures['msgs_per_s']:.0f} msg/s"
                )
            print(
                f"relay/direct: latency p50 x{relayed['p50_ms'] / direct['p50_ms']:.2f}, "
                f"throughput x{relayed['msgs_per_s'] / direct['msgs_per_s']:.2f}"
            )

            # Memory: idle TLS-in-TLS tunnels held open through the relay.
            assert relay.proc is not None
            descriptor = open_descriptor(decode_server_link(relayed_srv.link).descriptor, now_ms())
            context = server_context(descriptor)
            await asyncio.sleep(0.5)
            before = rss_kib(relay.proc.pid)
            tunnels: list[Stream] = []
            for _ in range(args.tunnels):
                t = await open_relay(relay.link, descriptor.server_key, now_ms(), 10)
                tunnels.append(await tls_over(t, context, None, descriptor.tls_pin, 10))
            await asyncio.sleep(0.5)
            after = rss_kib(relay.proc.pid)
            print(
                f"relay memory: {before} KiB idle, {after} KiB with {args.tunnels} tunnels: "
                f"{(after - before) / args.tunnels:.1f} KiB per tunnel"
            )
            for s in tunnels:
                s[1].transport.abort()
        finally:
            for c in clients:
                await c.close()
            await relay.close()
            await relayed_srv.stop()
            await direct_srv.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--tunnels", type=int, default=200)
    asyncio.run(main(parser.parse_args()))
