"""A reconnect storm: N devices with a message waiting all come back at once.

Starts one ``samizdat server`` (SQLite), registers ``--devices`` devices and deposits
``--queued`` envelopes for each while they are offline. Then ``--processes``
load-generator processes (bench/rawclient.py, all on core 1 unless ``--no-pin``) start
together on a signal and every device reconnects: TLS, hello, auth, subscribe, receive its
entries, acknowledge. Reports the time from the signal until the last device has
everything (target: 10,000 devices within 10 s), the median and worst per device, the
server's CPU per reconnect and the load generators' (so one can see which is the limit).
Everything binds to 127.0.0.0/8; source addresses rotate over 127.0.0.2-127.0.0.9.
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
from deposit_delivery import BODY_SIZE  # noqa: E402
from openloop import cpu_seconds  # noqa: E402
from rawclient import (  # noqa: E402
    SOURCES,
    RawConn,
    Recipient,
    Server,
    deposit_all,
    raise_nofile,
    register_many,
    run,
    serving,
    signing_key,
    start_py_spy,
    stop_py_spy,
    subscribe,
)
from samizdat.protocol import frames as f  # noqa: E402


async def _prepare(link: str, devices: int, queued: int) -> list[Recipient]:
    server = Server(link)
    recipients = await register_many(server, devices)
    targets = [r for r in recipients for _ in range(queued)]
    await deposit_all(server, targets, lambda: os.urandom(BODY_SIZE))
    return recipients


async def _come_back(
    server: Server, recipient: Recipient, queued: int, source: str, conns: list[RawConn]
) -> float:
    t0 = time.perf_counter()
    drained: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    got = 0

    def on_deliver(conn: RawConn, entries: list[f.Entry], now: int) -> None:
        nonlocal got
        got += len(entries)
        if got >= queued and not drained.done():
            drained.set_result(None)

    # Handshakes queue up in a storm: a long open timeout, so the bench reports how long.
    conn = await subscribe(server, recipient, on_deliver, 300, (source, 0), fast_io=False)
    conns.append(conn)  # held open until the end: a storm, not a trickle
    await asyncio.wait_for(drained, 300)
    return time.perf_counter() - t0


async def _storm(
    link: str, recipients: list[Recipient], queued: int, in_flight: int, offset: int, go: Any
) -> tuple[list[float], int, float, list[str], float]:
    server = Server(link)
    conns: list[RawConn] = []
    for r in recipients:
        signing_key(r)  # what a device has in memory before it reconnects
    await asyncio.to_thread(go.wait)
    cpu0 = time.process_time()
    sem = asyncio.Semaphore(in_flight)

    async def one(i: int, r: Recipient) -> float:
        async with sem:
            return await _come_back(server, r, queued, SOURCES[(offset + i) % len(SOURCES)], conns)

    start = time.perf_counter()
    results = await asyncio.gather(
        *(one(i, r) for i, r in enumerate(recipients)), return_exceptions=True
    )
    done_at = time.perf_counter() - start
    cpu = time.process_time() - cpu0
    times = [r for r in results if isinstance(r, float)]
    errors = sorted({type(r).__name__ for r in results if isinstance(r, BaseException)})
    for conn in conns:
        conn.close()
    return times, len(results) - len(times), done_at, errors, cpu


def _storm_process(
    link: str,
    recipients: list[Recipient],
    queued: int,
    in_flight: int,
    offset: int,
    ready: Any,
    go: Any,
    out: Any,
) -> None:
    raise_nofile(len(recipients) + 256)
    ready.put(None)
    out.put(run(_storm(link, recipients, queued, in_flight, offset, go)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--queued", type=int, default=1, help="envelopes waiting per device")
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--in-flight", type=int, default=256, help="reconnects under way per process at once"
    )
    parser.add_argument("--null-server", action="store_true", help="bench/null_server.py")
    parser.add_argument("--no-pin", action="store_true", help="no core pinning")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server with py-spy during the storm (speedscope JSON or, for a "
        ".txt name, collapsed stacks; needs ptrace rights)",
    )
    parser.add_argument(
        "--profile-seconds", type=float, default=10.0, help="with --profile: how long to record"
    )
    parser.add_argument(
        "--native", action="store_true", help="with --profile: native frames too (OpenSSL)"
    )
    args = parser.parse_args()
    raise_nofile(args.devices + 1024)

    with tempfile.TemporaryDirectory(prefix="samizdat-storm-") as tmp:
        data_dir = Path(tmp) / "server"
        with serving(data_dir, null=args.null_server, pin=not args.no_pin) as started:
            server, link, pinning = started
            t0 = time.perf_counter()
            recipients = run(_prepare(link, args.devices, args.queued))
            prepared = time.perf_counter() - t0
            what = "bench/null_server.py" if args.null_server else "1 process, SQLite"
            print(
                f"server: {what}; {args.devices} devices with {args.queued} "
                f"envelope(s) of {BODY_SIZE} B waiting (prepared in {prepared:.0f} s)"
            )
            print(pinning)
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
                        i,
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
            time.sleep(1)  # let every process reach go.wait()
            profiler = start_py_spy(
                server.pid, args.profile, args.profile_seconds, native=args.native
            )
            if profiler is not None:
                time.sleep(1)  # py-spy attaches
            cpu_before = cpu_seconds(server.pid)
            go.set()
            results = [out.get() for _ in procs]
            cpu = cpu_seconds(server.pid) - cpu_before
            stop_py_spy(profiler, 120)
            times = sorted(t for r in results for t in r[0])
            failed = sum(r[1] for r in results)
            total = max(r[2] for r in results)
            gen = sum(r[4] for r in results)
            back = len(times)
            print(
                f"all back and drained: {back} of {args.devices} ({failed} failed) in "
                f"{total:.1f} s; per device median {times[back // 2] * 1e3:.0f} ms, "
                f"worst {times[-1] * 1e3:.0f} ms; server CPU {cpu / max(back, 1) * 1e3:.2f} ms "
                f"each, load generators' CPU {gen / max(back, 1) * 1e3:.2f} ms each"
                if times
                else f"none came back ({failed} failed)"
            )
            errors = sorted({e for r in results for e in r[3]})
            if errors:
                print(f"failures: {', '.join(errors)}")
            for p in procs:
                p.join(60)


if __name__ == "__main__":
    main()
