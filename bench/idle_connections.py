"""Idle connections one samizdat server process holds, and server memory per connection.

Starts one ``samizdat server`` (SQLite) and opens ``--connections`` TLS WebSockets that
each complete the protocol hello and then stay idle, from ``--processes`` load-generator
processes whose source addresses rotate over 127.0.0.2-127.0.0.9 (more source ports
than one address allows). Reports the time to connect them all (a reconnect storm of
fresh TLS handshakes) and the growth of the server's resident memory per connection.
Everything binds to 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import websockets

from samizdat.protocol import frames as f

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deposit_delivery import (  # noqa: E402
    _descriptor,
    _ssl_context,
    _start_profiler,
    _stop_profiler,
)
from openloop import cpu_seconds  # noqa: E402

SOURCES = [f"127.0.0.{i}" for i in range(2, 10)]


def _raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, wanted), hard), hard))


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit("no VmRSS")


async def _hold(link: str, count: int, offset: int, hold: Any, done: Any) -> None:
    descriptor = _descriptor(link)
    ctx = _ssl_context(descriptor)
    url = descriptor.endpoints[0].url
    hello = f.encode(f.Hello(versions=[1], client="bench"))
    conns: list[Any] = []
    failures = 0
    sem = asyncio.Semaphore(64)  # handshakes in flight per process

    async def one(i: int) -> None:
        nonlocal failures
        async with sem:
            try:
                ws = await websockets.connect(
                    url,
                    ssl=ctx,
                    local_addr=(SOURCES[(offset + i) % len(SOURCES)], 0),
                    max_size=2**20,
                    compression=None,
                    open_timeout=60,
                    ping_interval=None,
                )
                await ws.send(hello)
                await ws.recv()
                conns.append(ws)
            except (OSError, websockets.WebSocketException, TimeoutError):
                failures += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    done.put((len(conns), failures))
    await asyncio.to_thread(hold.wait)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)


def _hold_process(link: str, count: int, offset: int, hold: Any, done: Any) -> None:
    _raise_nofile(count + 256)
    asyncio.run(_hold(link, count, offset, hold, done))


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
    args = parser.parse_args()
    need = args.connections + 1024

    with tempfile.TemporaryDirectory(prefix="samizdat-idle-") as tmp:
        data_dir = Path(tmp) / "server"
        server = subprocess.Popen(
            [sys.executable, "-m", "samizdat", "server", "--data-dir", str(data_dir)]
            + ["--listen", "127.0.0.1:0", "--log-level", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=lambda: _raise_nofile(need),
        )
        try:
            link_file = data_dir / "server-link"
            deadline = time.monotonic() + 30
            while not (link_file.exists() and link_file.read_text().strip()):
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.05)
            link = link_file.read_text().strip()
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
            profiler = _start_profiler(server.pid, args.profile, args.profile_seconds - 2)
            for p in procs:
                p.start()
            results = [done.get() for _ in procs]
            _stop_profiler(profiler)
            elapsed = time.perf_counter() - start
            cpu = cpu_seconds(server.pid) - cpu_before
            time.sleep(2)  # let the allocator settle
            after = rss_kib(server.pid)
            held = sum(r[0] for r in results)
            failed = sum(r[1] for r in results)
            print(f"server: 1 process, SQLite; clients: {args.processes} processes, TLS + hello")
            print(
                f"connected {held} of {args.connections} ({failed} failed) in {elapsed:.1f} s "
                f"({held / elapsed:,.0f}/s); server CPU {cpu / max(held, 1) * 1e3:.2f} ms each"
            )
            print(
                f"server RSS {before / 1024:.1f} MiB -> {after / 1024:.1f} MiB: "
                f"{(after - before) / max(held, 1):.1f} KiB per idle connection"
            )
            hold.set()
            for p in procs:
                p.join(60)
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
