"""A returning device's path behind the socket, in one process: CPU per reconnect.

``--devices`` registered devices, each with ``--queued`` envelopes waiting, come back
``--concurrency`` at a time: Hello, Auth (its Ed25519 proof), Subscribe, the backlog's
Deliver frames, Ack, close. Sessions are the real ``Session`` on the real ``SqliteStore``
(a temporary file, ``synchronous=FULL``) and ``LocalBus``, with a sink as the WebSocket
front gives one; frames go in through ``Session.receive_bytes``. No TLS, no WebSocket, no
sockets (``bench/reconnect_storm.py`` has those): what is left is the session, the store
and its threads, and the verify. Prints the process CPU time (all threads) per returning
device. Compare trees by alternating runs:

    .venv/bin/python bench/login_path.py --devices 2000 --concurrency 50
    PYTHONPATH=/tmp/base/src .venv/bin/python bench/login_path.py ...   # another tree
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from samizdat.protocol import frames as f  # noqa: E402
from samizdat.server.session import Session, SessionDeps  # noqa: E402
from samizdat.server.store.sqlite import SqliteStore  # noqa: E402
from tests.server.helpers import Device, memory_deps, registered_session  # noqa: E402


async def _prepare(deps: SessionDeps, devices: int, queued: int) -> list[Device]:
    out: list[Device] = []
    rid = 10
    for _ in range(devices):
        session, user, token = await registered_session(deps)
        device = user.devices[0]
        envelopes = [
            f.Envelope(device_id=device.device_id, msg_id=os.urandom(16), body=os.urandom(1024))
            for _ in range(queued)
        ]
        await session.receive_bytes(f.encode(f.Deposit(rid=rid, token=token, envelopes=envelopes)))
        assert isinstance(await session.next_frame(), f.DepositOk)
        await session.close()
        out.append(device)
    return out


async def _come_back(deps: SessionDeps, device: Device, queued: int) -> None:
    """One reconnect, driven as a client that waits for each answer."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[f.ServerFrame] | None = None
    got = 0
    drained = loop.create_future()

    def sink(frame: f.ServerFrame | None) -> None:
        nonlocal got
        if frame is None:
            return
        f.encode(frame)  # the front encodes every frame it sends
        if isinstance(frame, f.Deliver):
            got += len(frame.entries)
            if got >= queued and not drained.done():
                drained.set_result(frame.entries[-1].seq)
        elif waiter is not None and not waiter.done():
            waiter.set_result(frame)

    async def call(frame: f.ClientFrame | f.Hello) -> f.ServerFrame:
        nonlocal waiter
        waiter = loop.create_future()
        await session.receive_bytes(f.encode(frame))
        return await waiter

    session = Session(deps, sink=sink)
    welcome = await call(f.Hello(versions=[1]))
    assert isinstance(welcome, f.Welcome)
    proof = device.proof(deps.server_key, welcome.nonce)
    ok = await call(f.Auth(rid=1, device_id=device.device_id, proof=proof))
    assert isinstance(ok, f.AuthOk), ok
    assert isinstance(await call(f.Subscribe(rid=2, after=0)), f.Ok)
    last = await drained
    assert isinstance(await call(f.Ack(rid=3, up_to=last)), f.Ok)
    await session.close()


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "db")
        await store.open()
        try:
            deps = memory_deps(store, Path(tmp), limits=f.Limits(max_mailbox_entries=1000))
            t = time.perf_counter()
            devices = await _prepare(deps, args.devices, args.queued)
            print(f"prepared {args.devices} devices in {time.perf_counter() - t:.1f} s")
            todo = iter(devices)

            async def worker() -> None:
                for device in todo:
                    await _come_back(deps, device, args.queued)

            cpu, wall = time.process_time(), time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            print(
                f"{args.devices} returning devices, {args.concurrency} at a time: "
                f"{cpu / args.devices * 1e6:.0f} µs CPU each (all threads), "
                f"wall {wall:.2f} s"
            )
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--queued", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.run(_main(args))
    except ImportError:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
