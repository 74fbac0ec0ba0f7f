"""A reconnect storm: N devices with a message waiting all come back at once.

Starts one ``samizdat server`` (SQLite), registers ``--devices`` devices and deposits
``--queued`` envelopes for each while they are offline. Then ``--processes``
load-generator processes start together on a signal and every device reconnects: TLS,
hello, auth, subscribe, receive its entries, acknowledge. Reports the time from the
signal until the last device has everything (target: 10,000 devices within 10 s), the
median and worst per device, and the server's CPU per reconnect. Everything binds to
127.0.0.0/8; source addresses rotate over 127.0.0.2-127.0.0.9.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deposit_delivery import (  # noqa: E402
    BODY_SIZE,
    Conn,
    DepositConn,
    Recipient,
    _register,
    _start_server,
    _subscribe,
)
from idle_connections import _raise_nofile  # noqa: E402
from openloop import cpu_seconds  # noqa: E402
from samizdat.protocol import frames as f  # noqa: E402


async def _prepare(link: str, devices: int, queued: int) -> list[Recipient]:
    sem = asyncio.Semaphore(32)

    async def one() -> Recipient:
        async with sem:
            return await _register(link)

    recipients = list(await asyncio.gather(*(one() for _ in range(devices))))
    sender = DepositConn(await Conn.open(link))
    for start in range(0, len(recipients), 64):
        await asyncio.gather(
            *(
                sender.deposit(r, os.urandom(BODY_SIZE))
                for r in recipients[start : start + 64]
                for _ in range(queued)
            )
        )
    sender.reader.cancel()
    await sender.conn.ws.close()
    return recipients


#: This process's connections that came back, held open until the end: a storm, not a trickle.
conns: list[Conn] = []


async def _come_back(link: str, recipient: Recipient, queued: int) -> float:
    t0 = time.perf_counter()
    # Handshakes queue up in a storm: a long open timeout, so the bench reports how long.
    conn = await _subscribe(link, recipient, open_timeout=300)
    got = 0
    while got < queued:
        frame = f.decode_server_frame(await conn.ws.recv())
        if isinstance(frame, f.Deliver) and frame.entries:
            got += len(frame.entries)
            await conn.ws.send(f.encode(f.Ack(rid=conn.next_rid(), up_to=frame.entries[-1].seq)))
    elapsed = time.perf_counter() - t0
    conns.append(conn)
    return elapsed


def _storm_process(
    link: str,
    recipients: list[Recipient],
    queued: int,
    in_flight: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    _raise_nofile(len(recipients) + 256)

    async def run() -> None:
        ready.put(None)
        await asyncio.to_thread(go.wait)
        sem = asyncio.Semaphore(in_flight)

        async def one(r: Recipient) -> float:
            async with sem:
                return await _come_back(link, r, queued)

        start = time.perf_counter()
        results = await asyncio.gather(*(one(r) for r in recipients), return_exceptions=True)
        done_at = time.perf_counter() - start
        times = [r for r in results if isinstance(r, float)]
        errors = sorted({type(r).__name__ for r in results if isinstance(r, BaseException)})
        out.put((times, len(results) - len(times), done_at, errors))
        await asyncio.gather(*(c.ws.close() for c in conns), return_exceptions=True)

    asyncio.run(run())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=1, help="envelopes waiting per device")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="reconnects under way per process at once"
    )
    args = parser.parse_args()
    _raise_nofile(args.devices + 1024)

    with tempfile.TemporaryDirectory(prefix="samizdat-storm-") as tmp:
        server, link = _start_server(Path(tmp) / "server", [])
        try:
            t0 = time.perf_counter()
            recipients = asyncio.run(_prepare(link, args.devices, args.queued))
            prepared = time.perf_counter() - t0
            print(
                f"server: 1 process, SQLite; {args.devices} devices with {args.queued} "
                f"envelope(s) of {BODY_SIZE} B waiting (prepared in {prepared:.0f} s)"
            )
            ctx = mp.get_context("spawn")
            ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
            share = -(-len(recipients) // args.processes)
            procs = [
                ctx.Process(
                    target=_storm_process,
                    args=(
                        link,
                        recipients[i : i + share],
                        args.queued,
                        args.in_flight,
                        ready,
                        go,
                        out,
                    ),
                )
                for i in range(0, len(recipients), share)
            ]
            for p in procs:
                p.start()
            for _ in procs:
                ready.get()
            cpu_before = cpu_seconds(server.pid)
            go.set()
            results = [out.get() for _ in procs]
            cpu = cpu_seconds(server.pid) - cpu_before
            times = sorted(t for r in results for t in r[0])
            failed = sum(r[1] for r in results)
            total = max(r[2] for r in results)
            back = len(times)
            print(
                f"all back and drained: {back} of {args.devices} ({failed} failed) in "
                f"{total:.1f} s; per device median {times[back // 2] * 1e3:.0f} ms, "
                f"worst {times[-1] * 1e3:.0f} ms; server CPU {cpu / max(back, 1) * 1e3:.2f} ms each"
                if times
                else f"none came back ({failed} failed)"
            )
            errors = sorted({e for r in results for e in r[3]})
            if errors:
                print(f"failures: {', '.join(errors)}")
            for p in procs:
                p.join(60)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
