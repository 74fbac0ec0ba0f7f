"""A well-behaved client's deposit-to-delivery latency, with and without each attack.

    .venv/bin/python bench/abuse.py [--samples 150] [--rate 20] [--slowloris 2000]

One ``samizdat server`` process (SQLite, default limits). The measured client is a sender
connection depositing one envelope to a subscribed recipient connection (its own token)
``--rate`` times a second; latency runs from just before the deposit is written to the
moment the recipient's connection reads the entry. Each attack runs in its own process
(this one only measures) from a warm-up before the samples until after them:

* ``slowloris``: thousands of TCP connections that send two bytes of a TLS record header
  and then nothing (reopened when the server closes them);
* ``token flood``: 6 connections depositing as fast as they can with one victim token;
* ``forged tokens``: 6 connections depositing with a fresh random token each time;
* ``oversized frames``: 2 connections sending frames one byte over ``MAX_FRAME`` non-stop
  (each is answered ``frame_too_large``; the connection stays open);
* ``key claims``: 6 connections claiming the victim device's one-time keys non-stop.

Prints one row per scenario (p50, p99, max in ms, and what the attacker achieved).
Figures are noisy on a shared machine; see docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from samizdat.protocol import frames as f  # noqa: E402
from samizdat.protocol import limits  # noqa: E402
from tests.e2e.harness import ServerProcess  # noqa: E402
from tests.e2e.raw import RawConnection, RawDevice  # noqa: E402

ATTACKS = ("slowloris", "token flood", "forged tokens", "oversized frames", "key claims")


# -- attacks (each in its own process) ---------------------------------------------------


class Counts:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, int] = {}

    def add(self, key: str, n: int = 1) -> None:
        self.data[key] = self.data.get(key, 0) + n

    def save(self) -> None:
        self.path.write_text(json.dumps(self.data))


def _code(reply: f.ServerFrame) -> str:
    if isinstance(reply, f.KeyBundle):
        return "fallback_key" if reply.key.fallback else "one_time_key"
    return reply.code if isinstance(reply, f.Error) else type(reply).__name__


async def _slowloris(port: int, n: int, counts: Counts) -> None:
    socks: list[socket.socket] = []
    while True:
        alive = []
        for sock in socks:
            try:
                if sock.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    sock.close()
                    counts.add("closed_by_server")
                    continue
            except BlockingIOError:
                pass
            except OSError:
                sock.close()
                counts.add("closed_by_server")
                continue
            alive.append(sock)
        socks = alive
        while len(socks) < n:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                sock.sendall(b"\x16\x03")
                socks.append(sock)
                counts.add("opened")
            except OSError:
                counts.add("connect_failed")
                break
        counts.data["open_now"] = len(socks)
        await asyncio.sleep(0.5)


async def _loop(link: str, counts: Counts, make: Any) -> None:
    while True:
        try:
            conn = await RawConnection.open(link)
            while True:
                counts.add(_code(await conn.call(make(conn))))
        except Exception as exc:  # noqa: BLE001 - the attacker just reconnects
            counts.add(f"closed:{type(exc).__name__}")
            await asyncio.sleep(0.05)


async def _oversized(link: str, counts: Counts) -> None:
    while True:
        try:
            conn = await RawConnection.open(link)
            while True:  # frame_too_large leaves the connection open (protocol §7)
                await conn.send_raw(b"\x00" * (limits.MAX_FRAME + 1))
                counts.add(_code(await asyncio.wait_for(conn.recv(), 5)))
        except Exception as exc:  # noqa: BLE001 - the attacker just reconnects
            counts.add(f"closed:{type(exc).__name__}")


async def _attack(args: argparse.Namespace) -> None:
    counts = Counts(Path(args.counts))
    token, device = bytes.fromhex(args.token), bytes.fromhex(args.device)

    def deposit(conn: RawConnection, tok: bytes) -> f.Deposit:
        envelope = f.Envelope(device_id=device, msg_id=os.urandom(16), body=b"x" * 300)
        return f.Deposit(rid=conn.rid(), token=tok, envelopes=[envelope])

    jobs: list[Any]
    if args.attack == "slowloris":
        port = int(args.link_port)
        jobs = [_slowloris(port, args.slowloris, counts)]
    elif args.attack == "token flood":
        jobs = [_loop(args.link, counts, lambda c: deposit(c, token)) for _ in range(6)]
    elif args.attack == "forged tokens":
        jobs = [
            _loop(args.link, counts, lambda c: deposit(c, secrets.token_bytes(32)))
            for _ in range(6)
        ]
    elif args.attack == "oversized frames":
        jobs = [_oversized(args.link, counts) for _ in range(2)]
    else:
        claim = lambda c: f.ClaimKeys(rid=c.rid(), token=token, device_id=device)  # noqa: E731
        jobs = [_loop(args.link, counts, claim) for _ in range(6)]

    async def saver() -> None:
        while True:
            counts.save()
            await asyncio.sleep(0.5)

    await asyncio.gather(saver(), *jobs)


# -- the measured client -----------------------------------------------------------------


async def _registered(link: str) -> tuple[RawConnection, RawDevice, bytes]:
    conn = await RawConnection.open(link)
    device = RawDevice.generate()
    assert isinstance(await conn.register(device), f.AuthOk)
    token = secrets.token_bytes(32)
    assert isinstance(await conn.call(f.AddToken(rid=conn.rid(), token=token)), f.Ok)
    return conn, device, token


async def _measure(link: str, samples: int, rate: float) -> list[float]:
    recipient, device, token = await _registered(link)
    sender = await RawConnection.open(link)
    started: dict[bytes, float] = {}
    latencies: list[float] = []
    done = asyncio.Event()
    await recipient.ws.send(f.encode(f.Subscribe(rid=recipient.rid())))

    async def read() -> None:
        while True:
            frame = f.decode_server_frame(await recipient.ws.recv(), max_frame=2**22)
            if isinstance(frame, f.Deliver):
                now = time.perf_counter()
                for entry in frame.entries:
                    if entry.msg_id in started:
                        latencies.append(now - started.pop(entry.msg_id))
                last = frame.entries[-1].seq
                await recipient.ws.send(f.encode(f.Ack(rid=recipient.rid(), up_to=last)))
                if len(latencies) >= samples:
                    done.set()

    reader = asyncio.create_task(read())
    try:
        for _ in range(samples):
            msg_id = os.urandom(16)
            envelope = f.Envelope(device_id=device.device_id, msg_id=msg_id, body=b"y" * 300)
            started[msg_id] = time.perf_counter()
            reply = await sender.call(
                f.Deposit(rid=sender.rid(), token=token, envelopes=[envelope])
            )
            assert isinstance(reply, f.DepositOk), reply
            await asyncio.sleep(1 / rate)
        await asyncio.wait_for(done.wait(), 60)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        await sender.close()
        await recipient.close()
    return latencies


def _pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1] * 1000


async def _main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="samizdat-abuse-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server")
        server.start()
        try:
            owner, victim, victim_token = await _registered(server.link)
            keys = [victim.device.signed_key(f"k{i}") for i in range(limits.MAX_KEYS_PER_UPLOAD)]
            upload = f.UploadKeys(
                rid=owner.rid(),
                one_time_keys=keys,
                fallback_key=victim.device.signed_key("fb", fallback=True),
            )
            assert isinstance(await owner.call(upload), f.Ok)
            print(f"{'scenario':18} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  attacker")
            for scenario in ("none", *ATTACKS):
                counts_path = root / "counts.json"
                counts_path.unlink(missing_ok=True)
                proc = None
                if scenario != "none":
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--attack", scenario,
                        "--link", server.link, "--link-port", str(server.port),
                        "--token", victim_token.hex(), "--device", victim.device_id.hex(),
                        "--counts", str(counts_path), "--slowloris", str(args.slowloris),
                    )  # fmt: skip
                    await asyncio.sleep(args.warmup)
                try:
                    latencies = await _measure(server.link, args.samples, args.rate)
                finally:
                    if proc is not None:
                        proc.send_signal(signal.SIGKILL)
                        await proc.wait()
                assert server.alive(), f"the server died under {scenario}"
                attacker = counts_path.read_text() if counts_path.exists() else "-"
                print(
                    f"{scenario:18} {_pct(latencies, 0.5):8.1f} {_pct(latencies, 0.99):8.1f}"
                    f" {max(latencies) * 1000:8.1f}  {attacker}",
                    flush=True,
                )
        finally:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=150)
    parser.add_argument("--rate", type=float, default=20.0, help="deposits per second")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds of attack first")
    parser.add_argument("--slowloris", type=int, default=2000, help="half-open connections")
    parser.add_argument("--attack", choices=ATTACKS, help=argparse.SUPPRESS)
    parser.add_argument("--link", help=argparse.SUPPRESS)
    parser.add_argument("--link-port", help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--device", help=argparse.SUPPRESS)
    parser.add_argument("--counts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attack:
        asyncio.run(_attack(args))
    else:
        asyncio.run(_main(args))


if __name__ == "__main__":
    main()
