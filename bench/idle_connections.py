"""Idle connections one samizdat server process holds, and server memory per connection.

Starts one ``samizdat server`` (SQLite) and opens ``--connections`` TLS WebSockets that
each complete the protocol hello and then stay idle, from ``--processes`` load-generator
processes (bench/rawclient.py, all on core 1 unless ``--no-pin``) whose source addresses
rotate over 127.0.0.2-127.0.0.9 (more source ports than one address allows). Reports the
time to connect them all (a storm of fresh TLS handshakes), the server's and the load
generators' CPU per connection, and the growth of the server's resident memory per
connection. Everything binds to 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openloop import cpu_seconds, rss_kib  # noqa: E402
from rawclient import (  # noqa: E402
    SOURCES,
    BenchError,
    RawConn,
    Server,
    open_conn,
    raise_nofile,
    run,
    serving,
    start_py_spy,
    stop_py_spy,
)


async def _hold(link: str, count: int, offset: int, hold: Any, done: Any) -> None:
    server = Server(link)
    conns: list[RawConn] = []
    failures = 0
    sem = asyncio.Semaphore(64)  # handshakes in flight per process
    cpu0 = time.process_time()

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                source = SOURCES[(offset + i) % len(SOURCES)]
                conns.append(await open_conn(server, 60, (source, 0), fast_io=False))
            except (OSError, BenchError, TimeoutError):
                failures += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    done.put((len(conns), failures, time.process_time() - cpu0))
    await asyncio.to_thread(hold.wait)
    for conn in conns:
        conn.close()


def _hold_process(link: str, count: int, offset: int, hold: Any, done: Any) -> None:
    raise_nofile(count + 256)
    run(_hold(link, count, offset, hold, done))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--connections", type=int, default=2000)
    parser.add_argument("--processes", type=int, default=2, help="load-generator processes")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server with py-spy while the clients connect (speedscope JSON or, "
        "for a .txt name, collapsed stacks), for --profile-seconds",
    )
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--null-server", action="store_true", help="bench/null_server.py")
    parser.add_argument("--no-pin", action="store_true", help="no core pinning")
    args = parser.parse_args()
    need = args.connections + 1024

    with tempfile.TemporaryDirectory(prefix="samizdat-idle-") as tmp:
        data_dir = Path(tmp) / "server"
        with serving(data_dir, null=args.null_server, pin=not args.no_pin, nofile=need) as started:
            server, link, pinning = started
            time.sleep(0.5)
            before = rss_kib(server.pid)
            cpu_before = cpu_seconds(server.pid)
            ctx = mp.get_context("spawn")
            hold, done = ctx.Event(), ctx.Queue()
            share = args.connections // args.processes
            procs = [
                ctx.Process(target=_hold_process, args=(link, share, i * share, hold, done))
                for i in range(args.processes)
            ]
            start = time.perf_counter()
            profiler = start_py_spy(server.pid, args.profile, args.profile_seconds, gil=True)
            for p in procs:
                p.start()
            results = [done.get() for _ in procs]
            stop_py_spy(profiler)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(server.pid) - cpu_before
            time.sleep(2)  # let the allocator settle
            after = rss_kib(server.pid)
            held = sum(r[0] for r in results)
            failed = sum(r[1] for r in results)
            gen = sum(r[2] for r in results)
            what = "bench/null_server.py" if args.null_server else "1 process, SQLite"
            print(
                f"server: {what}; clients: {args.processes} processes (bench/rawclient.py), "
                "TLS + hello"
            )
            print(pinning)
            print(
                f"connected {held} of {args.connections} ({failed} failed) in {elapsed:.1f} s "
                f"({held / elapsed:,.0f}/s); server CPU {cpu / max(held, 1) * 1e3:.2f} ms each, "
                f"load generators' CPU {gen / max(held, 1) * 1e3:.2f} ms each"
            )
            print(
                f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
                f"{(after - before) / max(held, 1):.1f} KiB per idle connection"
            )
            hold.set()
            for p in procs:
                p.join(60)


if __name__ == "__main__":
    main()
