"""What the hop through Redis adds to a wake-up: node A publishes news, node B hears it.

Two processes, each with the server's own ``RedisBus`` on uvloop (as ``samizdat server``
runs): node A publishes "news" for one of ``--devices`` devices at a fixed offered rate
(open loop: each message carries its *intended* send time, so a stalled publisher is
charged, not hidden); node B subscribes to them all and records, per wake-up, the time
from that intended send until its subscription woke. ``--same-node`` runs the subscriber
on node A's bus instead (the wake-up a deposit on the consumer's own node gets), the
baseline the hop is added to. Both processes read the one system-wide monotonic clock.
"listen us" / "publish us": CPU of the listening / publishing process per message sent
(with ``--same-node`` one process does both, under "listen us").

    .venv/bin/python bench/redis_hop.py --rates 200,500 --duration 5 [--same-node]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import time
from collections.abc import Callable
from multiprocessing.synchronize import Event

import uvloop

from samizdat.server.bus.base import Subscription
from samizdat.server.bus.redis import RedisBus


def _percentile(sorted_values: list[int], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))] / 1e6


async def _listen(
    bus: RedisBus,
    devices: list[bytes],
    seconds: float,
    ready: Callable[[], object],
    cpu_used: list[float],
) -> list[int]:
    latencies: list[int] = []
    subscriptions = [bus.subscribe(d) for d in devices]
    for subscription in subscriptions:
        await subscription.claim()  # returns once Redis confirmed the SUBSCRIBE

    async def one(subscription: Subscription) -> None:
        while True:
            sent = await subscription.wait()
            latencies.append(time.monotonic_ns() - sent)

    tasks = [asyncio.create_task(one(s)) for s in subscriptions]
    ready()
    cpu = time.process_time()
    await asyncio.sleep(seconds)
    cpu_used[0] = time.process_time() - cpu
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for subscription in subscriptions:
        subscription.close()
    return latencies


async def _publish(bus: RedisBus, devices: list[bytes], rate: float, seconds: float) -> None:
    interval = 1e9 / rate
    start = time.monotonic_ns() + 50_000_000
    for n in range(int(rate * seconds)):
        intended = start + int(n * interval)
        delay = (intended - time.monotonic_ns()) / 1e9
        if delay > 0:
            await asyncio.sleep(delay)
        await bus.publish(devices[n % len(devices)], intended)


#: Latencies (ns), the listening process's CPU seconds, the publishing process's.
Result = tuple[list[int], float, float]


def _subscriber(
    url: str,
    devices: list[bytes],
    seconds: float,
    ready: Event,
    out: mp.Queue[tuple[list[int], float]],
) -> None:
    async def main() -> tuple[list[int], float]:
        bus = RedisBus(url)
        await bus.open()
        cpu = [0.0]
        try:
            return await _listen(bus, devices, seconds, ready.set, cpu), cpu[0]
        finally:
            await bus.close()

    out.put(uvloop.run(main()))


def _cross_node(url: str, rate: float, duration: float, devices: list[bytes]) -> Result:
    ctx = mp.get_context("spawn")
    ready: Event = ctx.Event()
    out: mp.Queue[tuple[list[int], float]] = ctx.Queue()
    node_b = ctx.Process(target=_subscriber, args=(url, devices, duration + 1.0, ready, out))
    node_b.start()
    if not ready.wait(30):
        node_b.kill()
        raise SystemExit("subscriber did not start")

    async def publisher() -> float:
        bus = RedisBus(url)
        await bus.open()
        try:
            cpu = time.process_time()
            await _publish(bus, devices, rate, duration)
            return time.process_time() - cpu
        finally:
            await bus.close()

    publisher_cpu = uvloop.run(publisher())
    latencies, listener_cpu = out.get(timeout=60)
    node_b.join(10)
    return latencies, listener_cpu, publisher_cpu


def _same_node(url: str, rate: float, duration: float, devices: list[bytes]) -> Result:
    async def both() -> Result:
        bus = RedisBus(url)
        await bus.open()
        try:
            ready = asyncio.Event()
            cpu = [0.0]
            listener = asyncio.create_task(_listen(bus, devices, duration + 1.0, ready.set, cpu))
            await ready.wait()
            await _publish(bus, devices, rate, duration)
            # One process: its CPU is the listener's and the publisher's together.
            return await listener, cpu[0], 0.0
        finally:
            await bus.close()

    return uvloop.run(both())


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n", 1)[0])
    parser.add_argument("--bus", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--rates", default="200,500")
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument("--same-node", action="store_true")
    args = parser.parse_args()
    devices = [os.urandom(16) for _ in range(args.devices)]
    where = "same node (no Redis hop)" if args.same_node else "node A -> Redis -> node B"
    print(f"wake-ups: {where}; {args.devices} devices; {os.cpu_count()} cores")
    print(
        f"{'offered/s':>10} {'woken':>7} {'p50 ms':>8} {'p99 ms':>8} {'p99.9 ms':>9} "
        f"{'max ms':>8} {'listen us':>9} {'publish us':>10}"
    )
    for rate in (float(r) for r in args.rates.split(",")):
        run = _same_node if args.same_node else _cross_node
        found, listener_cpu, publisher_cpu = run(args.bus, rate, args.duration, devices)
        latencies = sorted(found)
        sent = rate * args.duration
        print(
            f"{rate:>10,.0f} {len(latencies):>7} {_percentile(latencies, 0.5):>8.2f} "
            f"{_percentile(latencies, 0.99):>8.2f} {_percentile(latencies, 0.999):>9.2f} "
            f"{(latencies[-1] / 1e6 if latencies else float('nan')):>8.2f} "
            f"{listener_cpu / sent * 1e6:>9.0f} {publisher_cpu / sent * 1e6:>10.0f}"
        )


if __name__ == "__main__":
    main()
