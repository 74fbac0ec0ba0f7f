"""Durable envelopes/s and deposit→delivery latency of one samizdat server process.

See bench/README.md. Load generators run in their own processes so that they do not share
the server's event loop; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import secrets
import struct
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from openloop import cpu_seconds, percentile  # noqa: E402
from rawclient import (  # noqa: E402
    BenchError,
    RawConn,
    Recipient,
    Server,
    open_conn,
    register_many,
    run,
    serving,
    start_py_spy,
    stop_py_spy,
    subscribe,
)
from samizdat.protocol import frames as f  # noqa: E402

__all__ = [
    "BODY_SIZE",
    "Recipient",
    "_receiver_process",
    "_sender_process",
    "_setup",
]

BODY_SIZE = 1024  # one padding bucket: what a short text message occupies
_STAMP = struct.Struct(">q")
_COUNTER = struct.Struct(">Q")
_TICK = 0.001  # the open-loop schedule releases what is due every millisecond


async def _sender(
    link: str,
    recipients: list[Recipient],
    connections: int,
    in_flight: int,
    rate: float | None,
    duration: float,
) -> tuple[int, float, float]:
    """Deposit for ``duration`` s; ``rate`` None means as fast as acknowledgements allow
    (``in_flight`` deposits outstanding per connection, the next sent from the DepositOk
    callback of the last).

    With a rate, deposit k is *scheduled* at start + k/rate and stamped with that time (so a
    server that stalls is charged for the delay it caused: coordinated omission corrected);
    a timer every millisecond releases what is due, at most ``connections * in_flight``
    outstanding (deposits over that wait, keeping their stamp). Deposit k goes on connection
    k mod ``connections`` for recipient k mod ``len(recipients)`` (with as many connections
    as recipients, lane i always deposits for recipient i). Every deposit scheduled before
    the end is sent and awaited. Returns (deposits acknowledged, seconds, CPU seconds this
    process used meanwhile).
    """
    server = Server(link)
    conns = [await open_conn(server) for _ in range(connections)]
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()
    pad = os.urandom(BODY_SIZE - 8)
    id_prefix = os.urandom(8)
    lanes = connections * in_flight
    acked = outstanding = scheduled = 0
    stopped = False
    errors: list[str] = []
    waiting: deque[int] = deque()
    start = time.perf_counter()
    stop = start + duration
    start_ns = time.time_ns()
    cpu_start = time.process_time()

    def send(conn: RawConn, k: int, stamp: int, reply: Callable[[f.ServerFrame], None]) -> None:
        nonlocal outstanding
        outstanding += 1
        msg_id = id_prefix + _COUNTER.pack(k)  # unique without a getrandom() per deposit
        conn.deposit(recipients[k % len(recipients)], _STAMP.pack(stamp) + pad, reply, msg_id)

    def counted(reply: f.ServerFrame) -> None:
        nonlocal outstanding, acked
        outstanding -= 1
        if isinstance(reply, f.Error):
            errors.append(reply.code)
        else:
            acked += 1

    def finish_if_done() -> None:
        if stopped and outstanding == 0 and not waiting and not done.done():
            done.set_result(None)

    if rate is None:

        def closed_loop(conn: RawConn) -> Callable[[f.ServerFrame], None]:
            def on_reply(reply: f.ServerFrame) -> None:
                nonlocal scheduled, stopped
                counted(reply)
                if time.perf_counter() < stop:
                    scheduled += 1
                    send(conn, scheduled, time.time_ns(), on_reply)
                else:
                    stopped = True
                    finish_if_done()

            return on_reply

        for conn in conns:
            on_reply = closed_loop(conn)
            for _ in range(in_flight):
                scheduled += 1
                send(conn, scheduled, time.time_ns(), on_reply)
    else:
        interval_ns = 1e9 / rate
        total = int(duration * rate)

        def on_reply(reply: f.ServerFrame) -> None:
            counted(reply)
            pump()
            finish_if_done()

        def pump() -> None:
            while waiting and outstanding < lanes:
                k = waiting.popleft()
                send(conns[k % connections], k, start_ns + int(k * interval_ns), on_reply)

        def tick() -> None:
            nonlocal scheduled, stopped
            now = time.perf_counter()
            due = min(int((now - start) * rate) + 1, total)
            waiting.extend(range(scheduled, due))
            scheduled = max(scheduled, due)
            pump()
            if scheduled >= total:
                stopped = True
                finish_if_done()
            else:  # at the next deposit's time, at most every millisecond
                loop.call_later(max(_TICK, start + scheduled / rate - now), tick)

        tick()

    try:
        await asyncio.wait_for(done, duration + 60)
    finally:
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_start
        for conn in conns:
            await conn.wait_closed()
    if errors:
        raise BenchError(f"deposits refused: {sorted(set(errors))}")
    return acked, elapsed, cpu


def _sender_process(
    link: str,
    recipients: list[Recipient],
    connections: int,
    in_flight: int,
    rate: float | None,
    duration: float,
    out: Any,
) -> None:
    try:
        out.put(run(_sender(link, recipients, connections, in_flight, rate, duration)))
    except BaseException as exc:  # the parent waits on ``out``: never leave it hanging
        out.put(_failed(exc))
        raise


async def _receiver(
    link: str, recipients: list[Recipient], expect_seconds: float, ready: Any
) -> tuple[list[int], float]:
    """Subscribe every recipient (callbacks, one cumulative Ack per socket read), take the
    backlog of earlier phases unmeasured, then set ``ready`` and record each entry's latency
    from its scheduled send time. Stops ``expect_seconds - 5`` s after ready (callers pass
    the senders' duration + 5) once nothing arrived for 1 s, and at ``expect_seconds`` at
    the latest. Returns the latencies (ns) and the CPU seconds used after ready."""
    server = Server(link)
    latencies: list[int] = []
    phase_start = 1 << 62  # nothing is measured until ready
    last_arrival = time.monotonic()
    measured = 0

    def on_deliver(conn: RawConn, entries: list[f.Entry], now: int) -> None:
        nonlocal last_arrival, measured
        last_arrival = time.monotonic()
        for entry in entries:
            stamp = _STAMP.unpack_from(entry.body)[0]
            if stamp >= phase_start:
                latencies.append(now - stamp)
        measured = len(latencies)

    sem = asyncio.Semaphore(64)

    async def one(r: Recipient) -> RawConn:
        async with sem:
            return await subscribe(server, r, on_deliver)

    conns = await asyncio.gather(*(one(r) for r in recipients))
    # Take the backlog of earlier phases first, so it does not delay this phase.
    while time.monotonic() - last_arrival < 1.0:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    phase_start = time.time_ns()
    ready.set()
    cpu_start = time.process_time()
    t0 = time.monotonic()
    end, cap = t0 + max(expect_seconds - 5, 0.5), t0 + expect_seconds
    while True:
        now = time.monotonic()
        if now >= cap or (now >= end and measured and now - last_arrival >= 1.0):
            break
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu_start
    for conn in conns:
        await conn.wait_closed()
    return latencies, cpu


def _receiver_process(
    link: str, recipients: list[Recipient], expect_seconds: float, ready: Any, out: Any
) -> None:
    """Puts the latencies (ns) on ``out`` (what peers/compare.py's ladder expects)."""
    try:
        out.put(run(_receiver(link, recipients, expect_seconds, ready))[0])
    except BaseException as exc:
        ready.set()
        out.put(_failed(exc))
        raise


def _measured_receiver_process(
    link: str, recipients: list[Recipient], expect_seconds: float, ready: Any, out: Any
) -> None:
    """Puts (latencies, CPU seconds) on ``out``."""
    try:
        out.put(run(_receiver(link, recipients, expect_seconds, ready)))
    except BaseException as exc:
        ready.set()
        out.put(_failed(exc))
        raise


def _failed(exc: BaseException) -> SystemExit:
    return SystemExit(f"load generator failed: {type(exc).__name__}: {exc}")


def _check(result: Any) -> Any:
    """A load generator's result, or its failure raised here."""
    if isinstance(result, BaseException):
        raise result
    return result


def _run_senders(
    link: str, recipients: list[Recipient], args: argparse.Namespace, rate: float | None
) -> tuple[int, float, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    per_process_rate = rate / args.processes if rate else None
    procs = [
        ctx.Process(
            target=_sender_process,
            args=(
                link,
                recipients,
                args.connections,
                args.in_flight,
                per_process_rate,
                args.duration,
                out,
            ),
        )
        for _ in range(args.processes)
    ]
    for p in procs:
        p.start()
    results = [_check(out.get()) for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results), max(r[1] for r in results), sum(r[2] for r in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipients", type=int, default=50)
    parser.add_argument("--processes", type=int, default=1, help="sender processes")
    parser.add_argument("--connections", type=int, default=20, help="per sender process")
    parser.add_argument(
        "--in-flight", type=int, default=4, help="deposits in flight per connection"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per phase")
    parser.add_argument(
        "--rates", type=str, default="200,500,1000", help="offered envelopes/s for latency"
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server with py-spy during the saturation phase (speedscope JSON "
        "or, for a .txt name, collapsed stacks)",
    )
    parser.add_argument(
        "--store",
        metavar="URL",
        help="postgresql://... : run TWO server nodes on this store and --bus; senders "
        "deposit on node A, recipients subscribe on node B (every wake-up crosses the bus)",
    )
    parser.add_argument(
        "--profile-rate",
        type=float,
        metavar="RATE",
        help="with --profile: record the latency phase at this offered rate instead",
    )
    parser.add_argument("--bus", metavar="URL", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--same-node",
        action="store_true",
        help="with --store: subscribers on node A too, so no wake-up crosses Redis (to "
        "measure what the Redis hop adds)",
    )
    parser.add_argument(
        "--receivers", type=int, default=1, help="receiver processes (recipients split)"
    )
    parser.add_argument(
        "--null-server",
        action="store_true",
        help="drive bench/null_server.py instead of samizdat (the load generator's ceiling)",
    )
    parser.add_argument("--no-saturation", action="store_true", help="skip the saturation phase")
    parser.add_argument(
        "--no-pin",
        action="store_true",
        help="do not pin the server to core 0 and the load generators to core 1",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="samizdat-bench-") as tmp, ExitStack() as stack:
        pin = not args.no_pin
        if args.store:
            store = args.store
            schema = f"bench_{secrets.token_hex(6)}"
            asyncio.run(_pg_schema(store, f'CREATE SCHEMA "{schema}"'))
            # Exits in reverse: the schema goes after both nodes have stopped.
            stack.callback(
                lambda: asyncio.run(_pg_schema(store, f'DROP SCHEMA "{schema}" CASCADE'))
            )
            sep = "&" if "?" in store else "?"
            extra = ["--store", f"{store}{sep}search_path={schema}", "--bus", args.bus]
            extra += ["--identity-dir", str(Path(tmp) / "identity")]
            node_a, link, pinning = stack.enter_context(
                serving(Path(tmp) / "node-a", pin=pin, extra=extra)
            )
            node_b, recv_link, _ = stack.enter_context(
                serving(Path(tmp) / "node-b", pin=pin, extra=extra)
            )
            servers = [node_a, node_b]
            what = "2 nodes, PostgreSQL (synchronous_commit=on) + Redis bus"
            if args.same_node:
                recv_link = link
                what += "; subscribers on the depositing node"
        else:
            data_dir = Path(tmp) / "server"
            server, link, pinning = stack.enter_context(
                serving(data_dir, pin=pin, null=args.null_server)
            )
            recv_link = link
            servers = [server]
            what = (
                "bench/null_server.py (NOT samizdat: answers, pushes, stores nothing)"
                if args.null_server
                else "1 process, SQLite (WAL, synchronous=FULL)"
            )
        server = servers[0]
        # The statement that cleans up after each backlog, when nothing else will.
        vacuum: str | None = None
        if args.store and not asyncio.run(_pg_autovacuum(args.store)):
            tables = ("mailbox_entries", "mailboxes", "msg_ids")
            vacuum = "VACUUM (ANALYZE) " + ", ".join(f'"{schema}".{t}' for t in tables)
            print(
                "PostgreSQL runs with autovacuum off here: after each backlog is taken, the "
                "bench runs VACUUM (ANALYZE) on the mailbox tables, as autovacuum would "
                "(without it every ack walks the drained backlog's dead rows)"
            )
        recipients = run(_setup(recv_link, args.recipients))
        print(f"server: {what}; {os.cpu_count()} cores")
        print(pinning)
        print(
            f"body: {BODY_SIZE} B; senders: {args.processes} proc x {args.connections} "
            f"conn x {args.in_flight} in flight; {args.recipients} recipient devices "
            f"in {args.receivers} receiver proc; generator: bench/rawclient.py (picows, "
            f"uvloop, one cumulative Ack per socket read)"
        )
        if not args.no_saturation:
            profile_saturation = args.profile if args.profile_rate is None else None
            profiler = start_py_spy(server.pid, profile_saturation, args.duration + 2, gil=True)
            cpu_before = cpu_seconds(server.pid)
            acked, elapsed, gen = _run_senders(link, recipients, args, None)
            cpu = cpu_seconds(server.pid) - cpu_before
            stop_py_spy(profiler)
            print(
                f"saturation: {acked / elapsed:,.0f} envelopes/s durable "
                f"({acked} in {elapsed:.1f} s); server CPU {cpu / elapsed:.0%} of a core, "
                f"{cpu / max(acked, 1) * 1e6:.0f} us per deposit; generator CPU "
                f"{gen / max(acked, 1) * 1e6:.0f} us per deposit"
            )
        print(
            f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
            f"{'p99.9 ms':>9} {'n':>7} {'us/env':>7} {'gen us/env':>10} {'gen core':>8}"
        )
        passed: list[tuple[float, float]] = []  # (delivered/s, generator us/env)
        for rate in (float(r) for r in args.rates.split(",")):
            ctx = mp.get_context("spawn")
            ready, out = ctx.Event(), ctx.Queue()
            share = -(-len(recipients) // args.receivers)
            receivers = [
                ctx.Process(
                    target=_measured_receiver_process,
                    args=(recv_link, recipients[i : i + share], args.duration + 5, ready, out),
                )
                for i in range(0, len(recipients), share)
            ]
            for receiver in receivers:
                receiver.start()
                ready.wait(60)  # one at a time: each takes its backlog unmeasured
                ready.clear()
            if vacuum is not None:
                asyncio.run(_pg_schema(args.store, vacuum))
            profiler = None
            if args.profile_rate == rate:
                profiler = start_py_spy(server.pid, args.profile, args.duration + 2, gil=True)
            cpu_before = sum(cpu_seconds(s.pid) for s in servers)
            acked, elapsed, gen = _run_senders(link, recipients, args, rate)
            results = [_check(out.get()) for _ in receivers]
            latencies = sorted(x for r in results for x in r[0])
            gen += sum(r[1] for r in results)
            for receiver in receivers:
                receiver.join()
            cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
            stop_py_spy(profiler)
            n = max(len(latencies), 1)
            print(
                f"{rate:>10,.0f} {acked / elapsed:>11,.0f} "
                f"{percentile(latencies, 0.50):>8.1f} {percentile(latencies, 0.99):>8.1f} "
                f"{percentile(latencies, 0.999):>9.1f} {len(latencies):>7} "
                f"{cpu / n * 1e6:>7.0f} {gen / n * 1e6:>10.0f} {gen / elapsed:>8.0%}"
            )
            expected = int(args.duration * rate / args.processes) * args.processes
            if len(latencies) >= expected and percentile(latencies, 0.99) <= 50:
                passed.append((len(latencies) / elapsed, gen / n * 1e6))
        if args.null_server:
            best = max(passed, default=(0.0, float("nan")))
            print(
                f"load generator ceiling: {best[0]:,.0f} envelopes/s delivered at p99 <= 50 "
                f"ms, nothing lost (best step); its CPU there {best[1]:.0f} us per envelope "
                f"(senders + receivers) = at most {1e6 / best[1]:,.0f}/s on one whole core"
                if passed
                else "load generator ceiling: no step passed p99 <= 50 ms with nothing lost"
            )


async def _pg_schema(url: str, statement: str) -> None:
    import asyncpg  # only the two-node run needs it

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _pg_autovacuum(url: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(url)
    try:
        return bool(await conn.fetchval("SELECT current_setting('autovacuum') = 'on'"))
    finally:
        await conn.close()


async def _setup(link: str, count: int) -> list[Recipient]:
    recipients: list[Recipient] = await register_many(Server(link), count)
    return recipients


if __name__ == "__main__":
    main()
