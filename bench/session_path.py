"""The server's path behind the socket, in one process: CPU per envelope without the network.

``pairs`` sender sessions each deposit with at most ``--in-flight`` envelopes unanswered
(1: a client that waits for each ``DepositOk``) into the mailbox of one subscribed
receiver session; each receiver acknowledges every ``Deliver`` frame it gets (one ``Ack``
per frame, as the client does). Sessions are the real ``Session`` on the real
``SqliteStore`` (a temporary file, ``synchronous=FULL``) and ``LocalBus``; frames go in
as encoded bytes through ``Session.receive_bytes`` and come out of the outbox and through
``frames.encode``, as a driver would send them. No TLS, no WebSocket, no sockets: what is
left is decode → handler → store → bus → delivery → encode, and the store's threads.

Prints the process CPU time (all threads) per delivered envelope, which counts the
deposit, its delivery and the acknowledgement. Stable enough on a loaded machine to
compare trees (alternate runs); for instruction counts run it under
``valgrind --tool=callgrind`` with a small ``--envelopes``.

    .venv/bin/python bench/session_path.py --envelopes 20000 --pairs 50 [--in-flight 4]
    PYTHONPATH=/tmp/base/src .venv/bin/python bench/session_path.py ...   # another tree
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samizdat.protocol import frames as f  # noqa: E402
from samizdat.server.ratelimit import KeyedBuckets, RateLimits  # noqa: E402
from samizdat.server.session import Session, SessionDeps  # noqa: E402
from samizdat.server.store.sqlite import SqliteStore  # noqa: E402
from tests.server.helpers import memory_deps, registered_session  # noqa: E402


def _deps(store: SqliteStore, tmp: Path) -> SessionDeps:
    """The tests' in-memory set-up without the flood limits (a bench measures capacity)."""
    unlimited = RateLimits(
        connection_rate=1e9, connection_burst=1e9, token_rate=1e9, token_burst=1e9
    )
    deps = memory_deps(store, tmp, token_buckets=KeyedBuckets(1e9, 1e9, 100_000))
    return dataclasses.replace(deps, rate_limits=unlimited)


async def _sender(session: Session, frames: list[bytes], sent: list[int], in_flight: int) -> None:
    """Deposit with at most ``in_flight`` unanswered; the driver encodes each answer."""
    window = asyncio.Semaphore(in_flight)

    async def answers() -> None:
        for _ in frames:
            frame = await session.next_frame()
            assert isinstance(frame, f.DepositOk), frame
            f.encode(frame)
            window.release()

    reader = asyncio.create_task(answers())
    for data in frames:
        await window.acquire()
        await session.receive_bytes(data)
        sent[0] += 1
    await reader


async def _receiver(session: Session, expected: int, delivered: list[int]) -> None:
    got = 0
    rid = 10
    while got < expected:
        frame = await session.next_frame()
        assert frame is not None
        f.encode(frame)  # what the driver sends
        if isinstance(frame, f.Ok):
            continue
        assert isinstance(frame, f.Deliver), frame
        got += len(frame.entries)
        delivered[0] += len(frame.entries)
        rid += 1
        await session.receive_bytes(f.encode(f.Ack(rid=rid, up_to=frame.entries[-1].seq)))


async def run(envelopes: int, pairs: int, body_size: int, in_flight: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        store = SqliteStore(tmp / "db")
        await store.open()
        try:
            deps = _deps(store, tmp)
            per_pair = envelopes // pairs
            senders: list[tuple[Session, list[bytes]]] = []
            receivers: list[Session] = []
            body = os.urandom(body_size)
            for p in range(pairs):
                sender, _, _ = await registered_session(deps)
                receiver, user, token = await registered_session(deps)
                await receiver.receive_bytes(f.encode(f.Subscribe(rid=3)))
                target = user.devices[0].device_id
                frames = [
                    f.encode(
                        f.Deposit(
                            rid=100 + i,
                            token=token,
                            envelopes=[
                                f.Envelope(
                                    device_id=target,
                                    msg_id=(p * 10**9 + i).to_bytes(16, "big"),
                                    body=body,
                                )
                            ],
                        )
                    )
                    for i in range(per_pair)
                ]
                senders.append((sender, frames))
                receivers.append(receiver)
            sent, delivered = [0], [0]
            commits0 = store.commits
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await asyncio.gather(
                *(_sender(s, fr, sent, in_flight) for s, fr in senders),
                *(_receiver(r, per_pair, delivered) for r in receivers),
            )
            wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
            commits = store.commits - commits0
            for s in [*(s for s, _ in senders), *receivers]:
                await s.close()
        finally:
            await store.close()
    n = delivered[0]
    return {
        "envelopes": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "us_per_env": cpu / n * 1e6,
        "env_per_s": n / wall,
        "commits": commits,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--envelopes", type=int, default=20_000)
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--body", type=int, default=200, help="envelope body bytes")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--in-flight", type=int, default=1, help="deposits per sender")
    parser.add_argument(
        "--loop", choices=["uvloop", "asyncio"], default="uvloop", help="uvloop: as the server"
    )
    args = parser.parse_args()
    for _ in range(args.runs):
        coro = run(args.envelopes, args.pairs, args.body, args.in_flight)
        if args.loop == "uvloop":
            import uvloop

            r = uvloop.run(coro)
        else:
            r = asyncio.run(coro)
        print(
            f"envelopes={r['envelopes']:.0f} pairs={args.pairs} in_flight={args.in_flight}"
            f" cpu={r['cpu_s']:.2f}s"
            f" wall={r['wall_s']:.2f}s us/env={r['us_per_env']:.1f}"
            f" env/s(wall)={r['env_per_s']:.0f} commits={r['commits']:.0f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
