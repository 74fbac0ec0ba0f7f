"""The one raw protocol client every bench drives a samizdat server with (issue 7).

Theory of operation
-------------------
A bench must be able to offer more load than the server can take, from ONE core. So the
client is callback-driven on uvloop: picows (a Cython WebSocket) calls
:meth:`RawConn.on_ws_frame` for every frame it parses; no task, future or ``await`` per frame
on the hot path. Frames are encoded and decoded with :mod:`samizdat.protocol.frames`
(msgspec), the same code the server and the real client use, so the wire format is the real
one. TLS is real, and the server is identified as a client identifies it: by the
SubjectPublicKeyInfo of the leaf, which must match the descriptor's pin (see :class:`Server`
for why the certificate chain is not verified as well).

Requests carry a rid; :meth:`RawConn.request` sends one and calls back with the reply of the
same rid, so any number of requests may be in flight on one connection (deposits are
pipelined this way). Setup steps (register, add_token, auth, subscribe) use the awaitable
:meth:`RawConn.call`.

Deliveries go to ``on_deliver(conn, entries, now_ns)``. Acknowledgement is what a real
client does: ONE cumulative ``Ack(up_to)`` per read, i.e. after the last frame that picows
parsed from one socket read (``WSFrame.last_in_buffer``), for every Deliver frame of that
read. A receiver that keeps up acks each Deliver frame; one that falls behind acks a whole
batch at once, like the real client's per-batch ack.

Processes: :func:`serving` starts the server under test (``samizdat server`` or
bench/null_server.py) and pins it to core 0; :func:`pin_generator` puts a load-generator
process on the cores named by ``SAMIZDAT_BENCH_CORES`` (the benches set it to ``1``, unless
``--no-pin``).
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import resource
import secrets
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

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

#: Source addresses for many connections (more source ports than one address allows).
SOURCES: Final = [f"127.0.0.{i}" for i in range(2, 10)]
#: Environment variable naming the cores load generators run on ("" or unset: no pinning).
CORES_ENV: Final = "SAMIZDAT_BENCH_CORES"
SERVER_CORES: Final = {0}
GENERATOR_CORES: Final = {1}

Reply = Callable[[f.ServerFrame], None]
OnDeliver = Callable[["RawConn", list[f.Entry], int], None]


class BenchError(Exception):
    """The server refused something a bench relies on, or a connection broke."""


# -- processes ---------------------------------------------------------------------------


def can_pin() -> bool:
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin(pid: int, cores: set[int]) -> None:
    """Run ``pid`` (0: this process) on ``cores`` only: every thread it has.

    ``sched_setaffinity(pid)`` moves only the thread whose id is ``pid``; threads the
    process started before (the SQLite committer) would go on running on any core, the
    generators' included.
    """
    for task in Path(f"/proc/{pid or os.getpid()}/task").iterdir():
        os.sched_setaffinity(int(task.name), cores)


def enable_pinning(server_pids: list[int], enabled: bool) -> str:
    """Pin the servers to core 0 and make every generator started from now on pin itself to
    core 1 (through the environment, which spawned processes inherit). Returns a line for the
    output saying which."""
    if not enabled or not can_pin():
        os.environ[CORES_ENV] = ""
        return "pinning: off (server and load generators float over all cores)"
    for pid in server_pids:
        pin(pid, SERVER_CORES)
    os.environ[CORES_ENV] = ",".join(str(c) for c in sorted(GENERATOR_CORES))
    return (
        f"pinning: server on core {min(SERVER_CORES)}, every load-generator process on core "
        f"{min(GENERATOR_CORES)}"
    )


def pin_generator() -> None:
    """Called first in every load-generator process: pin it as ``CORES_ENV`` says."""
    cores = os.environ.get(CORES_ENV, "")
    if cores:
        pin(0, {int(c) for c in cores.split(",")})


def raise_nofile(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(max(soft, wanted), hard), hard))


def run(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a load generator's coroutine on uvloop, pinned (see :func:`pin_generator`)."""
    pin_generator()
    # As ``samizdat server`` does: hundreds of connections under way each hold thousands of
    # containers, so the default threshold (700 net allocations) collected all the time,
    # and the older generations' collections walked every object of the imports.
    gc.freeze()
    gc.set_threshold(20_000, 10, 10)
    return uvloop.run(main)


# -- the server under test ---------------------------------------------------------------

Started = tuple[subprocess.Popen[bytes], str]


def start_server(data_dir: Path, extra: Sequence[str] = (), nofile: int | None = None) -> Started:
    """One ``samizdat server`` on 127.0.0.1 (SQLite in ``data_dir`` unless ``extra`` says
    otherwise) and its server link. ``nofile``: the open-file limit it needs."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "samizdat", "server", "--data-dir", str(data_dir)]
        + ["--listen", "127.0.0.1:0", "--log-level", "warning"]
        # The benches measure capacity, not the flood limits an operator keeps.
        + ["--token-rate", "1000000", "--connection-rate", "1000000", *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=None if nofile is None else lambda: raise_nofile(nofile),
    )
    return proc, _link(proc, data_dir, "server")


def start_null_server(data_dir: Path) -> Started:
    """bench/null_server.py: the protocol without a server behind it (generator ceiling)."""
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve().parent / "null_server.py"), str(data_dir)],
        stdout=subprocess.DEVNULL,
    )
    return proc, _link(proc, data_dir, "null server")


def _link(proc: subprocess.Popen[bytes], data_dir: Path, what: str) -> str:
    link_file = data_dir / "server-link"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if link_file.exists() and (link := link_file.read_text().strip()):
            return link
        time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{what} did not start")


@contextmanager
def serving(
    data_dir: Path,
    *,
    pin: bool,
    null: bool = False,
    extra: Sequence[str] = (),
    nofile: int | None = None,
) -> Iterator[tuple[subprocess.Popen[bytes], str, str]]:
    """bench/null_server.py (``null``) or one ``samizdat server`` (:func:`start_server`) in
    ``data_dir``, pinned as :func:`enable_pinning` says; yields (the process, its server
    link, the pinning line to print) and stops the server at the end."""
    proc, link = start_null_server(data_dir) if null else start_server(data_dir, extra, nofile)
    try:
        yield proc, link, enable_pinning([proc.pid], pin)
    finally:
        proc.terminate()
        proc.wait(10)


# -- the server as a client knows it ---------------------------------------------------------


class Server:
    """What a client knows of a server from its link: descriptor, URL, TLS context, pin.

    The TLS context is the client's (transport/tls.py ``server_context``: the same versions,
    ALPN and so the same ClientHello, byte for byte but for its random values) except that
    it does not verify the certificate chain against the descriptor's CA. The client checks
    both; the pin alone already identifies the server: OpenSSL checks the handshake's
    signature (CertificateVerify) with the leaf's key whatever the verify mode, and
    :meth:`check_pin` then requires that key to be the pinned one, so only the holder of
    the pinned key gets through either way. The chain adds checks of the CA's signature
    and the validity dates, which cost the client ~10 % of a reconnect (OpenSSL 3.0) and
    the server nothing: its work on the wire is the same.
    """

    def __init__(self, link: str) -> None:
        signed = decode_server_link(link).descriptor
        self.descriptor: Descriptor = open_descriptor(signed, int(time.time() * 1000))
        self.url = self.descriptor.endpoints[0].url
        self.server_key = self.descriptor.server_key
        self.ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        self.ssl.check_hostname = False
        self.ssl.verify_mode = ssl.CERT_NONE
        self.ssl.set_alpn_protocols(["http/1.1"])
        self._pinned: set[bytes] = set()  # leaf certificates (DER) whose pin matched

    def check_pin(self, transport: WSTransport) -> None:
        ssl_object = transport.underlying_transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der is None:
            raise BenchError("no TLS peer certificate")
        if der in self._pinned:
            return
        spki = (
            x509.load_der_x509_certificate(der)
            .public_key()
            .public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
        )
        if hashlib.sha256(spki).digest() != self.descriptor.tls_pin:
            raise BenchError("TLS pin mismatch")
        self._pinned.add(der)


@dataclass(frozen=True)
class Recipient:
    device_id: bytes
    token: bytes
    seed: bytes  # the device's Ed25519 seed, to authenticate its subscriber


_HELLO: Final = f.encode(f.Hello(versions=[1], client="bench"))


# -- the connection --------------------------------------------------------------------


class RawConn(WSListener):
    """One protocol connection; picows calls ``on_ws_frame`` for every frame."""

    def __init__(self) -> None:
        super().__init__()
        self.transport: WSTransport | None = None
        self.welcome: f.Welcome | None = None
        self.rid = 0
        self.pending: dict[int, Reply] = {}
        self.on_deliver: OnDeliver | None = None
        self.backlog: list[f.Entry] = []  # delivered before on_deliver was set
        self.auto_ack = True
        self.acks = 0
        self.fatal: BenchError | None = None
        self._unacked = 0  # highest seq delivered and not yet acknowledged
        loop = asyncio.get_running_loop()
        self._welcomed: asyncio.Future[f.Welcome] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # picows callbacks
    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.BINARY:
            self._on_frame(f.decode_server_frame(frame.get_payload_as_bytes()))
        elif frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if self._unacked and frame.last_in_buffer:
            self.ack()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        error = self.fatal or BenchError("connection closed")
        if not self._welcomed.done():
            self._welcomed.set_exception(error)
        if not self.closed.done():
            self.closed.set_result(None)
        pending, self.pending = self.pending, {}
        for reply in pending.values():
            reply(f.Error(rid=None, code="closed", message=str(error)))

    def _on_frame(self, frame: f.ServerFrame) -> None:
        if isinstance(frame, f.Deliver):
            entries = frame.entries
            if entries:
                if self.auto_ack:
                    self._unacked = entries[-1].seq
                if self.on_deliver is not None:
                    self.on_deliver(self, entries, time.time_ns())
                else:
                    self.backlog.extend(entries)
            return
        rid = getattr(frame, "rid", None)
        if rid is not None:
            reply = self.pending.pop(rid, None)
            if reply is not None:
                reply(frame)
            elif isinstance(frame, f.Error):
                self.fatal = BenchError(f"server error {frame.code}: {frame.message}")
        elif isinstance(frame, f.Welcome):
            if not self._welcomed.done():
                self._welcomed.set_result(frame)
        elif isinstance(frame, f.Error):
            self.fatal = BenchError(f"server closes: {frame.code} {frame.message}")

    # sending
    def next_rid(self) -> int:
        self.rid += 1
        return self.rid

    def send(self, frame: f.ClientFrame) -> None:
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, f.encode(frame))

    def request(self, frame: f.ClientFrame, reply: Reply) -> None:
        """Send ``frame`` (its rid from :meth:`next_rid`); ``reply`` gets the answer."""
        rid = f.request_id(frame)
        assert rid is not None
        self.pending[rid] = reply
        self.send(frame)

    def ack(self) -> None:
        """One cumulative Ack for everything delivered so far (its Ok is ignored)."""
        self.send(f.Ack(rid=self.next_rid(), up_to=self._unacked))
        self._unacked = 0
        self.acks += 1

    async def call(self, frame: f.ClientFrame, wait: float = 60) -> f.ServerFrame:
        """Send a request and wait for its reply; ``Error`` raises :class:`BenchError`."""
        fut: asyncio.Future[f.ServerFrame] = asyncio.get_running_loop().create_future()

        def done(reply: f.ServerFrame) -> None:
            if not fut.done():
                fut.set_result(reply)

        self.request(frame, done)
        reply = await asyncio.wait_for(fut, wait)
        if isinstance(reply, f.Error):
            raise BenchError(f"server error {reply.code}: {reply.message}")
        return reply

    def deposit(
        self, target: Recipient, body: bytes, reply: Reply, msg_id: bytes | None = None
    ) -> None:
        """Deposit one envelope for ``target``; ``reply`` gets the DepositOk (or Error)."""
        envelope = f.Envelope(
            device_id=target.device_id, msg_id=msg_id or os.urandom(16), body=body
        )
        self.request(
            f.Deposit(rid=self.next_rid(), token=target.token, envelopes=[envelope]), reply
        )

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.send_close()
            self.transport.disconnect()

    async def wait_closed(self) -> None:
        self.close()
        await self.closed


async def open_conn(
    server: Server,
    open_timeout: float = 10,
    local_addr: tuple[str, int] | None = None,
    fast_io: bool = True,
) -> RawConn:
    """TLS (pin checked), WebSocket, Hello, Welcome.

    ``fast_io``: aiofastnet's TLS transport (picows' default), ~15 % less CPU per frame than
    uvloop's, but no cheaper per connect and less tried under storms of fresh connections,
    which pass False (bench/README.md).
    """

    async def connect() -> RawConn:
        transport, listener = await ws_connect(
            RawConn,
            server.url,
            ssl_context=server.ssl,
            websocket_handshake_timeout=open_timeout,
            max_frame_size=2**20,
            local_addr=local_addr,
            use_aiofastnet=fast_io,
        )
        assert isinstance(listener, RawConn)
        try:
            server.check_pin(transport)
        except BenchError:
            listener._welcomed.cancel()  # nobody will wait for it now
            transport.disconnect(graceful=False)
            raise
        transport.send(WSMsgType.BINARY, _HELLO)
        listener.welcome = await listener._welcomed
        return listener

    return await asyncio.wait_for(connect(), open_timeout)


# -- protocol steps -----------------------------------------------------------------------


async def register(server: Server) -> Recipient:
    """A new user with one device: Register, AddToken; returns what senders and the
    device's later subscriber need."""
    conn = await open_conn(server)
    assert conn.welcome is not None
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
    proof = device.sign(
        AUTH_CONTEXT, auth_message(server.server_key, conn.welcome.nonce, device_id)
    )
    await conn.call(f.Register(rid=conn.next_rid(), device=keys, devices=signed, proof=proof))
    token = secrets.token_bytes(32)
    await conn.call(f.AddToken(rid=conn.next_rid(), token=token))
    await conn.wait_closed()
    return Recipient(device_id, token, device.secret_bytes())


async def register_many(server: Server, count: int, parallel: int = 32) -> list[Recipient]:
    sem = asyncio.Semaphore(parallel)

    async def one() -> Recipient:
        async with sem:
            return await register(server)

    return list(await asyncio.gather(*(one() for _ in range(count))))


_keys: dict[bytes, SigningKey] = {}


def signing_key(recipient: Recipient) -> SigningKey:
    """The device's signing key, loaded once per process (a storm loads them before "go")."""
    key = _keys.get(recipient.seed)
    if key is None:
        key = _keys[recipient.seed] = SigningKey.from_secret_bytes(recipient.seed)
    return key


async def auth(conn: RawConn, server: Server, recipient: Recipient) -> None:
    assert conn.welcome is not None
    device = signing_key(recipient)
    proof = device.sign(
        AUTH_CONTEXT, auth_message(server.server_key, conn.welcome.nonce, recipient.device_id)
    )
    await conn.call(f.Auth(rid=conn.next_rid(), device_id=recipient.device_id, proof=proof))


async def subscribe(
    server: Server,
    recipient: Recipient,
    on_deliver: OnDeliver | None = None,
    open_timeout: float = 10,
    local_addr: tuple[str, int] | None = None,
    fast_io: bool = True,
) -> RawConn:
    """Open, Auth as ``recipient``, Subscribe: deliveries go to ``on_deliver`` from the
    moment Subscribe is sent (the backlog arrives right after its Ok)."""
    conn = await open_conn(server, open_timeout, local_addr, fast_io)
    await auth(conn, server, recipient)
    conn.on_deliver = on_deliver
    await conn.call(f.Subscribe(rid=conn.next_rid(), after=0), open_timeout)
    return conn


async def deposit_all(
    server: Server, targets: list[Recipient], body: Callable[[], bytes], in_flight: int = 256
) -> None:
    """One envelope per item of ``targets`` (repeat a target to queue several), pipelined
    ``in_flight`` at a time on one connection; every DepositOk awaited."""
    conn = await open_conn(server)
    done = asyncio.get_running_loop().create_future()
    todo = iter(targets)
    outstanding = 0
    errors: list[str] = []

    def next_one() -> None:
        nonlocal outstanding
        target = next(todo, None)
        if target is None:
            if outstanding == 0 and not done.done():
                done.set_result(None)
            return
        outstanding += 1
        conn.deposit(target, body(), on_ok)

    def on_ok(reply: f.ServerFrame) -> None:
        nonlocal outstanding
        outstanding -= 1
        if isinstance(reply, f.Error):
            errors.append(reply.code)
        next_one()

    for _ in range(in_flight):
        next_one()
    if not targets and not done.done():
        done.set_result(None)
    await done
    await conn.wait_closed()
    if errors:
        raise BenchError(f"deposits refused: {sorted(set(errors))}")


def start_py_spy(
    pid: int, out: str | None, seconds: float, *, gil: bool = False, native: bool = False
) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid`` for ``seconds`` into ``out`` (speedscope JSON, or collapsed
    stacks for a .txt name; needs ptrace rights); None without ``out``. ``gil``: only
    samples holding the GIL; ``native``: C frames too (OpenSSL), which stops the process."""
    if out is None:
        return None
    fmt = "raw" if out.endswith(".txt") else "speedscope"
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(pid), "--duration", str(int(seconds))]
        + ["--rate", "1000", "--format", fmt, "--output", out]
        + (["--gil"] if gil else [])
        + (["--native"] if native else ["--nonblocking"]),
        stdout=subprocess.DEVNULL,
    )


def stop_py_spy(profiler: subprocess.Popen[bytes] | None, timeout: float = 60) -> None:
    if profiler is not None:
        profiler.wait(timeout)
