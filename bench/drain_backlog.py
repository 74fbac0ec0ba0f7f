"""A returning device drains its queued messages: time from Subscribe to the last entry.

Starts one ``samizdat server`` (SQLite), deposits ``--queued`` envelopes for one device
while it is offline, then subscribes as that device and times until every entry arrived
(acknowledging each Deliver frame as a client does). Everything binds to 127.0.0.1.
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
from deposit_delivery import (  # noqa: E402
    BODY_SIZE,
    Conn,
    DepositConn,
    _register,
    _start_server,
    _subscribe,
)
from samizdat.protocol import frames as f  # noqa: E402


async def _run(link: str, queued: int, rounds: int) -> list[float]:
    times: list[float] = []
    for _ in range(rounds):
        device = await _register(link)
        sender = DepositConn(await Conn.open(link))
        for start in range(0, queued, 64):
            await asyncio.gather(
                *(
                    sender.deposit(device, os.urandom(BODY_SIZE))
                    for _ in range(min(64, queued - start))
                )
            )
        sender.reader.cancel()
        await sender.conn.ws.close()
        t0 = time.perf_counter()
        conn = await _subscribe(link, device)  # includes TLS, hello, auth, subscribe
        got = 0
        while got < queued:
            frame = f.decode_server_frame(await conn.ws.recv())
            if isinstance(frame, f.Deliver) and frame.entries:
                got += len(frame.entries)
                ack = f.Ack(rid=conn.next_rid(), up_to=frame.entries[-1].seq)
                await conn.ws.send(f.encode(ack))
        times.append(time.perf_counter() - t0)
        await conn.ws.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--queued", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="samizdat-drain-") as tmp:
        server, link = _start_server(Path(tmp) / "server", [])
        try:
            times = sorted(asyncio.run(_run(link, args.queued, args.rounds)))
            print(f"server: 1 process, SQLite; {args.queued} queued envelopes of {BODY_SIZE} B")
            print(
                "connect + auth + subscribe + drain + acks: "
                + ", ".join(f"{t * 1e3:.0f}" for t in times)
                + f" ms (median {times[len(times) // 2] * 1e3:.0f} ms)"
            )
        finally:
            server.terminate()
            server.wait(10)


if __name__ == "__main__":
    main()
