"""A returning device drains its queued messages: time from Subscribe to the last entry.

Starts one ``samizdat server`` (SQLite), deposits ``--queued`` envelopes for one device
while it is offline, then subscribes as that device and times until every entry arrived
(acknowledging as a client does: one cumulative Ack per socket read, bench/rawclient.py).
Everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from deposit_delivery import BODY_SIZE  # noqa: E402
from rawclient import (  # noqa: E402
    RawConn,
    Server,
    deposit_all,
    register,
    run,
    serving,
    subscribe,
)
from samizdat.protocol import frames as f  # noqa: E402


async def _drain_once(server: Server, queued: int) -> float:
    device = await register(server)
    await deposit_all(server, [device] * queued, lambda: os.urandom(BODY_SIZE))
    all_in: asyncio.Future[float] = asyncio.get_running_loop().create_future()
    got = 0

    def on_deliver(conn: RawConn, entries: list[f.Entry], now: int) -> None:
        nonlocal got
        got += len(entries)
        if got >= queued and not all_in.done():
            all_in.set_result(time.perf_counter())

    t0 = time.perf_counter()
    conn = await subscribe(server, device, on_deliver)  # TLS, hello, auth, subscribe
    elapsed = await asyncio.wait_for(all_in, 60) - t0
    await conn.wait_closed()
    return elapsed


async def _run(link: str, queued: int, rounds: int) -> list[float]:
    server = Server(link)
    return [await _drain_once(server, queued) for _ in range(rounds)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--null-server", action="store_true", help="bench/null_server.py")
    parser.add_argument("--no-pin", action="store_true", help="no core pinning")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="samizdat-drain-") as tmp:
        data_dir = Path(tmp) / "server"
        with serving(data_dir, null=args.null_server, pin=not args.no_pin) as started:
            _, link, pinning = started
            times = sorted(run(_run(link, args.queued, args.rounds)))
            what = "bench/null_server.py" if args.null_server else "1 process, SQLite"
            print(f"server: {what}; {args.queued} queued envelopes of {BODY_SIZE} B")
            print(pinning)
            print(
                "connect + auth + subscribe + drain + acks: "
                + ", ".join(f"{t * 1e3:.0f}" for t in times)
                + f" ms (median {times[len(times) // 2] * 1e3:.0f} ms)"
            )


if __name__ == "__main__":
    main()
