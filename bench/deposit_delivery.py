"""Durable envelopes/s and deposit→delivery latency of one samizdat server process.

See bench/README.md. Load generators run in their own processes so that they do not share
the server's event loop; everything binds to 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import multiprocessing as mp
import os
import secrets
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import websockets
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from openloop import cpu_seconds, open_loop, percentile
from samizdat.crypto.signing import SigningKey
from samizdat.protocol import frames as f
from samizdat.protocol.descriptor import Descriptor, open_descriptor
from samizdat.protocol.keys import (
    AUTH_CONTEXT,
    DEVICE_LIST_CONTEXT,
    DeviceKeys,
    DeviceList,
    SignedDeviceList,
    auth_message,
    device_id_for,
)
from samizdat.protocol.links import decode_server_link

BODY_SIZE = 1024  # one padding bucket: what a short text message occupies


@dataclass(frozen=True)
class Recipient:
    device_id: bytes
    token: bytes
    seed: bytes  # the device's Ed25519 seed, to authenticate its subscriber


def _descriptor(link: str) -> Descriptor:
    return open_descriptor(decode_server_link(link).descriptor, int(time.time() * 1000))


def _ssl_context(descriptor: Descriptor) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cadata=descriptor.tls_ca)
    return ctx


class Conn:
    """A minimal raw protocol connection (the bench drives the server, not the client)."""

    def __init__(self, ws: Any, welcome: f.Welcome) -> None:
        self.ws = ws
        self.welcome = welcome
        self.rid = 0

    @classmethod
    async def open(cls, link: str, open_timeout: float = 10) -> Conn:
        descriptor = _descriptor(link)
        ws = await websockets.connect(
            descriptor.endpoints[0].url,
            ssl=_ssl_context(descriptor),
            max_size=2**20,
            open_timeout=open_timeout,
        )
        peer = ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True)
        spki = (
            x509.load_der_x509_certificate(peer)
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        if hashlib.sha256(spki).digest() != descriptor.tls_pin:
            raise SystemExit("TLS pin mismatch")
        await ws.send(f.encode(f.Hello(versions=[1], client="bench")))
        raw = await ws.recv()
        assert isinstance(raw, bytes)
        welcome = f.decode_server_frame(raw)
        assert isinstance(welcome, f.Welcome), welcome
        return cls(ws, welcome)

    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    async def call(self, frame: f.ClientFrame) -> f.ServerFrame:
        await self.ws.send(f.encode(frame))
        while True:
            raw = await self.ws.recv()
            assert isinstance(raw, bytes)
            reply = f.decode_server_frame(raw)
            if not isinstance(reply, f.Deliver):
                if isinstance(reply, f.Error):
                    raise SystemExit(f"server error {reply.code}: {reply.message}")
                return reply


async def _register(link: str) -> Recipient:
    conn = await Conn.open(link)
    user = SigningKey.generate()
    device = SigningKey.generate()
    device_id = device_id_for(device.public_bytes)
    keys = DeviceKeys(
        device_id=device_id,
        signing_key=device.public_bytes,
        identity_key=secrets.token_bytes(32),
        sealing_key=secrets.token_bytes(32),
    )
    body = msgspec.msgpack.encode(
        DeviceList(
            user_key=user.public_bytes,
            devices=[keys],
            version=1,
            issued_at=int(time.time() * 1000),
        )
    )
    signed = SignedDeviceList(body=body, signature=user.sign(DEVICE_LIST_CONTEXT, body))
    server_key = _descriptor(link).server_key
    proof = device.sign(AUTH_CONTEXT, auth_message(server_key, conn.welcome.nonce, device_id))
    await conn.call(f.Register(rid=conn.next_rid(), device=keys, devices=signed, proof=proof))
    token = secrets.token_bytes(32)
    await conn.call(f.AddToken(rid=conn.next_rid(), token=token))
    await conn.ws.close()
    return Recipient(device_id, token, device.secret_bytes())


async def _subscribe(link: str, recipient: Recipient, open_timeout: float = 10) -> Conn:
    conn = await Conn.open(link, open_timeout)
    device = SigningKey.from_secret_bytes(recipient.seed)
    server_key = _descriptor(link).server_key
    proof = device.sign(
        AUTH_CONTEXT, auth_message(server_key, conn.welcome.nonce, recipient.device_id)
    )
    await conn.call(f.Auth(rid=conn.next_rid(), device_id=recipient.device_id, proof=proof))
    await conn.call(f.Subscribe(rid=conn.next_rid(), after=0))
    return conn


def _body(scheduled_ns: int) -> bytes:
    return struct.pack(">q", scheduled_ns) + os.urandom(BODY_SIZE - 8)


class DepositConn:
    """A sender connection with many deposits in flight, matched to replies by rid."""

    def __init__(self, conn: Conn) -> None:
        self.conn = conn
        self.pending: dict[int, asyncio.Future[None]] = {}
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.conn.ws:
            assert isinstance(raw, bytes)
            reply = f.decode_server_frame(raw)
            if isinstance(reply, f.DepositOk):
                self.pending.pop(reply.rid).set_result(None)
            elif isinstance(reply, f.Error):
                raise SystemExit(f"deposit refused: {reply.code} {reply.message}")

    async def deposit(self, target: Recipient, body: bytes) -> None:
        rid = self.conn.next_rid()
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        envelope = f.Envelope(device_id=target.device_id, msg_id=os.urandom(16), body=body)
        await self.conn.ws.send(
            f.encode(f.Deposit(rid=rid, token=target.token, envelopes=[envelope]))
        )
        await fut


async def _sender(
    link: str,
    recipients: list[Recipient],
    connections: int,
    in_flight: int,
    rate: float | None,
    duration: float,
) -> tuple[int, float]:
    """Deposit for ``duration`` s; ``rate`` None means as fast as acknowledgements allow.

    With a rate, every lane sends on a fixed schedule and stamps each envelope with its
    *scheduled* time, so a server that stalls is charged for the delay it caused.
    """
    conns = [DepositConn(await Conn.open(link)) for _ in range(connections)]
    lanes = connections * in_flight

    async def send(slot: int, n: int, scheduled: int) -> None:
        target = recipients[(slot + n * lanes) % len(recipients)]
        await conns[slot % connections].deposit(target, _body(scheduled))

    acked, elapsed = await open_loop(lanes, rate, duration, send)
    for conn in conns:
        conn.reader.cancel()
        await conn.conn.ws.close()
    return acked, elapsed


def _sender_process(
    link: str,
    recipients: list[Recipient],
    connections: int,
    in_flight: int,
    rate: float | None,
    duration: float,
    out: Any,
) -> None:
    out.put(asyncio.run(_sender(link, recipients, connections, in_flight, rate, duration)))


async def _drain_backlog(conn: Conn, quiet: float = 1.0) -> None:
    while True:
        try:
            raw = await asyncio.wait_for(conn.ws.recv(), quiet)
        except TimeoutError:
            return
        assert isinstance(raw, bytes)
        frame = f.decode_server_frame(raw)
        if isinstance(frame, f.Deliver) and frame.entries:
            await conn.ws.send(f.encode(f.Ack(rid=conn.next_rid(), up_to=frame.entries[-1].seq)))


async def _receiver(
    link: str, recipients: list[Recipient], expect_seconds: float, ready: Any, out: Any
) -> None:
    conns = [await _subscribe(link, r) for r in recipients]
    # Take the backlog of earlier phases first, so it does not delay this phase.
    await asyncio.gather(*(_drain_backlog(c) for c in conns))
    latencies: list[int] = []
    phase_start = time.time_ns()
    ready.set()
    idle_deadline = time.monotonic() + expect_seconds

    async def drain(conn: Conn) -> None:
        while True:
            remaining = idle_deadline - time.monotonic()
            if remaining <= 0:
                return
            try:
                raw = await asyncio.wait_for(conn.ws.recv(), remaining)
            except TimeoutError:
                return
            assert isinstance(raw, bytes)
            frame = f.decode_server_frame(raw)
            if isinstance(frame, f.Deliver):
                now = time.time_ns()
                for entry in frame.entries:
                    stamp = struct.unpack(">q", entry.body[:8])[0]
                    if stamp >= phase_start:  # the backlog of earlier phases is not measured
                        latencies.append(now - stamp)
                if frame.entries:
                    rid = conn.next_rid()
                    await conn.ws.send(f.encode(f.Ack(rid=rid, up_to=frame.entries[-1].seq)))

    await asyncio.gather(*(drain(c) for c in conns))
    out.put(latencies)


def _receiver_process(
    link: str, recipients: list[Recipient], expect_seconds: float, ready: Any, out: Any
) -> None:
    asyncio.run(_receiver(link, recipients, expect_seconds, ready, out))


def _start_server(data_dir: Path, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "samizdat",
            "server",
            "--data-dir",
            str(data_dir),
            "--listen",
            "127.0.0.1:0",
            "--log-level",
            "warning",
            # The bench measures capacity, not the flood limits an operator keeps.
            "--token-rate",
            "1000000",
            "--connection-rate",
            "1000000",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    link_file = data_dir / "server-link"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if link_file.exists() and link_file.read_text().strip():
            return proc, link_file.read_text().strip()
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("server did not start")


def _start_profiler(pid: int, out: str | None, duration: float) -> subprocess.Popen[bytes] | None:
    """py-spy attached to the server process for one phase (needs ptrace rights)."""
    if out is None:
        return None
    fmt = "raw" if out.endswith(".txt") else "speedscope"
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(duration) + 2)]
        + ["--rate", "1000", "--gil", "--format", fmt, "--output", out, "--nonblocking"],
        stdout=subprocess.DEVNULL,
    )


def _stop_profiler(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is not None:
        profiler.wait(60)


def _run_senders(
    link: str, recipients: list[Recipient], args: argparse.Namespace, rate: float | None
) -> tuple[int, float]:
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
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    return sum(r[0] for r in results), max(r[1] for r in results)


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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="samizdat-bench-") as tmp:
        schema = ""
        if args.store:
            schema = f"bench_{secrets.token_hex(6)}"
            asyncio.run(_pg_schema(args.store, f'CREATE SCHEMA "{schema}"'))
            sep = "&" if "?" in args.store else "?"
            extra = ["--store", f"{args.store}{sep}search_path={schema}", "--bus", args.bus]
            extra += ["--identity-dir", str(Path(tmp) / "identity")]
            node_a, link = _start_server(Path(tmp) / "node-a", extra)
            node_b, recv_link = _start_server(Path(tmp) / "node-b", extra)
            servers = [node_a, node_b]
            what = "2 nodes, PostgreSQL (synchronous_commit=on) + Redis bus"
            if args.same_node:
                recv_link = link
                what += "; subscribers on the depositing node"
        else:
            server, link = _start_server(Path(tmp) / "server", [])
            recv_link = link
            servers = [server]
            what = "1 process, SQLite (WAL, synchronous=FULL)"
        server = servers[0]
        try:
            recipients = asyncio.run(_setup(recv_link, args.recipients))
            print(f"server: {what}; {os.cpu_count()} cores")
            print(
                f"body: {BODY_SIZE} B; senders: {args.processes} proc x {args.connections} "
                f"conn x {args.in_flight} in flight; {args.recipients} recipient devices"
            )
            profile_saturation = args.profile if args.profile_rate is None else None
            profiler = _start_profiler(server.pid, profile_saturation, args.duration)
            cpu_before = cpu_seconds(server.pid)
            acked, elapsed = _run_senders(link, recipients, args, None)
            cpu = cpu_seconds(server.pid) - cpu_before
            _stop_profiler(profiler)
            print(
                f"saturation: {acked / elapsed:,.0f} envelopes/s durable "
                f"({acked} in {elapsed:.1f} s); server CPU {cpu / elapsed:.0%} of a core, "
                f"{cpu / max(acked, 1) * 1e6:.0f} us per deposit"
            )
            print(
                f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} "
                f"{'p99.9 ms':>9} {'n':>7} {'us/env':>7}"
            )
            for rate in (float(r) for r in args.rates.split(",")):
                ctx = mp.get_context("spawn")
                ready, out = ctx.Event(), ctx.Queue()
                receiver = ctx.Process(
                    target=_receiver_process,
                    args=(recv_link, recipients, args.duration + 5, ready, out),
                )
                receiver.start()
                ready.wait(60)
                profiler = None
                if args.profile_rate == rate:
                    profiler = _start_profiler(server.pid, args.profile, args.duration)
                cpu_before = sum(cpu_seconds(s.pid) for s in servers)
                acked, elapsed = _run_senders(link, recipients, args, rate)
                latencies = sorted(out.get())
                receiver.join()
                cpu = sum(cpu_seconds(s.pid) for s in servers) - cpu_before
                _stop_profiler(profiler)
                print(
                    f"{rate:>10,.0f} {acked / elapsed:>11,.0f} "
                    f"{percentile(latencies, 0.50):>8.1f} {percentile(latencies, 0.99):>8.1f} "
                    f"{percentile(latencies, 0.999):>9.1f} {len(latencies):>7} "
                    f"{cpu / max(len(latencies), 1) * 1e6:>7.0f}"
                )
        finally:
            for proc in servers:
                proc.terminate()
                proc.wait(10)
            if schema:
                asyncio.run(_pg_schema(args.store, f'DROP SCHEMA "{schema}" CASCADE'))


async def _pg_schema(url: str, statement: str) -> None:
    import asyncpg  # only the two-node run needs it

    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _setup(link: str, count: int) -> list[Recipient]:
    return [await _register(link) for _ in range(count)]


if __name__ == "__main__":
    main()
