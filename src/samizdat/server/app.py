"""The composition root of the server: store, bus, identity, web app, uvicorn (DESIGN §4, §5).

``samizdat server --data-dir D --listen HOST:PORT`` calls :func:`run`. Tests and other
embedders use :func:`start`, which returns a :class:`RunningServer` once the port is
bound and serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import secrets
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import msgspec
import uvicorn
import uvloop
from uvicorn.config import Config as UvicornConfig

from samizdat.errors import LocalError
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor
from samizdat.protocol.links import decode_relay_link
from samizdat.protocol.relay import RelayLink
from samizdat.server.blobs import DEFAULT_BLOB_QUOTA, BlobPolicy, BlobService, make_blob_store
from samizdat.server.budgets import ClaimBudgets, LocalClaimBudgets, RedisClaimBudgets
from samizdat.server.bus.base import Bus
from samizdat.server.bus.local import LocalBus
from samizdat.server.bus.redis import RedisBus
from samizdat.server.front import WS_MAX_SIZE, FrontState, front_protocol
from samizdat.server.identity import (
    ServerIdentity,
    endpoint_url,
    load_or_create_identity,
    reload_server_key,
    rotate_server_key,
)
from samizdat.server.poll import PollSessions
from samizdat.server.ratelimit import KeyedBuckets, RateLimits
from samizdat.server.session import ConsumerRegistry, SessionDeps
from samizdat.server.store.base import Store
from samizdat.server.store.postgres import PostgresStore
from samizdat.server.store.sqlite import SqliteStore
from samizdat.server.tuning import tune_io
from samizdat.server.web import ConnectionStats, build_app

__all__ = [
    "ROTATE_FLAG",
    "ServerConfig",
    "RunningServer",
    "parse_listen",
    "start",
    "serve",
    "run",
]

_log = logging.getLogger(__name__)

_STATS_INTERVAL: Final = 60.0
_UNSPECIFIED_HOSTS: Final = ("0.0.0.0", "::", "")
#: File in the data directory that makes the next SIGHUP rotate the server key.
ROTATE_FLAG: Final = "rotate-key"


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_mailbox_entries: int = limits.MAX_MAILBOX_ENTRIES
    #: Entries nobody fetched within this many days are deleted (DESIGN §5).
    mailbox_ttl_days: float = 30.0
    #: Bytes of attachment blobs one device may hold; blobs live at most the mailbox TTL.
    blob_quota_bytes: int = DEFAULT_BLOB_QUOTA
    log_level: str = "info"
    #: Host name or address put in the descriptor's endpoint, when clients reach the
    #: server under another name than ``host`` (e.g. listening on 0.0.0.0).
    public_host: str | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    #: Print the server link on stdout once serving (``samizdat server`` does).
    print_link: bool = True
    #: ``postgresql://...`` to share state with other nodes; None: SQLite in data_dir.
    store_url: str | None = field(default=None, repr=False)
    #: ``redis://...`` to wake consumers on other nodes; None: in-process only.
    bus_url: str | None = field(default=None, repr=False)
    #: More endpoint URLs for the descriptor (the other nodes of a cluster), after ours.
    extra_endpoints: tuple[str, ...] = ()
    #: Where the server key and TLS files live, if not in data_dir: every node of a
    #: cluster must present the same identity (docs/scaling.md).
    identity_dir: Path | None = None
    #: ``samizdat:relay/...`` links listed in the descriptor (``--relay``), then lines of
    #: ``data_dir/relays`` (re-read on SIGHUP); every client learns them (protocol §11.4).
    relays: tuple[str, ...] = field(default=(), repr=False)


def parse_listen(text: str) -> tuple[str, int]:
    """``"127.0.0.1:8443"``, ``"[::1]:8443"`` or ``"localhost:0"`` -> (host, port).

    Raises:
        LocalError: not HOST:PORT with a port in 0..65535.
    """
    host, sep, port_text = text.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise LocalError("listen address must be HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = int(port_text)
    if port > 65535:
        raise LocalError("port must be at most 65535")
    return host, port


def _tls_context(config: UvicornConfig, default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """uvicorn's server context (certificate, key), without TLS 1.3 session tickets.

    No client resumes a session (ours pins a fresh handshake, asyncio's transports cannot
    offer a saved session), so the two tickets OpenSSL would issue after every handshake
    are CPU and bytes thrown away (docs/performance.md, "Third round: connecting").
    """
    del config
    context = default()
    context.num_tickets = 0
    return context


#: gc.set_threshold() for ``samizdat server`` (Python's default is 700, 10, 10).
GC_THRESHOLDS: Final = (20_000, 10, 10)


class _Uvicorn(uvicorn.Server):
    # We install our own signal handlers: uvicorn's re-raise SIGTERM after shutdown,
    # which would kill the process before the store is closed.
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@dataclass
class RunningServer:
    """A started server. ``link`` is the ``samizdat:server/...`` link clients use."""

    config: ServerConfig
    host: str
    port: int
    link: str = field(repr=False)
    descriptor: SignedDescriptor = field(repr=False)
    identity: ServerIdentity = field(repr=False)
    store: Store = field(repr=False)
    _uvicorn: _Uvicorn = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _stats_task: asyncio.Task[None] = field(repr=False)
    _expire_task: asyncio.Task[None] = field(repr=False)
    _bus: Bus = field(repr=False)
    _deps: SessionDeps = field(repr=False)
    _stats: ConnectionStats = field(repr=False)
    _polls: PollSessions = field(repr=False)
    _stopped: bool = False
    blobs: BlobService | None = field(default=None, repr=False)
    _front: FrontState | None = field(default=None, repr=False)

    def endpoints(self) -> list[str]:
        """The endpoint URLs the next descriptor lists (config, then ``endpoints`` file)."""
        return _endpoints(self.config, self.port)

    def reissue(self) -> SignedDescriptor:
        """Sign a new descriptor (higher seq) and push it to every connected client.

        What SIGHUP does, after an operator edited ``data_dir/endpoints``.
        """
        now_ms = int(time.time() * 1000)
        seq = max(now_ms, _seq_of(self.descriptor) + 1)
        self.descriptor = self.identity.descriptor(
            self.endpoints(), now_ms, seq=seq, relays=_relays(self.config)
        )
        self.link = self.identity.link(self.descriptor)
        self._deps.descriptor = self.descriptor
        _write_link(self.config.data_dir / "server-link", self.link)
        for session in list(self._stats.sessions):
            session.push_descriptor(self.descriptor)
        _log.info("descriptor re-issued; pushed to %d connections", len(self._stats.sessions))
        return self.descriptor

    def rotate_key(self) -> SignedDescriptor:
        """Hand the server over to a new Ed25519 key, signed by the old one, and push the
        new descriptor (carrying the rotation) to every connection (protocol §4).

        Logins are checked against the new key from now on.
        """
        now_ms = int(time.time() * 1000)
        self.identity = rotate_server_key(
            self.identity, self.config.identity_dir or self.config.data_dir, now_ms
        )
        self._deps.server_key = self.identity.server_key
        _log.info("server key rotated")
        return self.reissue()

    def on_sighup(self) -> None:
        """SIGHUP: re-issue the descriptor; rotate the key first if the operator created
        ``data_dir/rotate-key`` (removed once done), or take up a key another node sharing
        the identity directory rotated to."""
        flag = self.config.data_dir / ROTATE_FLAG
        if flag.exists():
            flag.unlink()
            self.rotate_key()
            return
        identity_dir = self.config.identity_dir or self.config.data_dir
        self.identity = reload_server_key(self.identity, identity_dir)
        self._deps.server_key = self.identity.server_key
        self.reissue()

    def request_stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM and SIGINT do)."""
        self._uvicorn.should_exit = True
        self._polls.wake_all()  # long-poll requests would hold the shutdown up

    async def wait(self) -> None:
        """Until the server has stopped, then release the store."""
        try:
            await asyncio.wait({self._task})
        finally:
            await self._cleanup()
        if not self._task.cancelled() and (exc := self._task.exception()) is not None:
            raise exc

    async def stop(self) -> None:
        self.request_stop()
        await self.wait()

    async def _cleanup(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stats_task.cancel()
        self._expire_task.cancel()
        await asyncio.wait({self._stats_task, self._expire_task})
        if self._front is not None:
            await self._front.close()
        await self._polls.close_all()
        await self._bus.close()
        await self._deps.claim_budgets.close()
        if self.blobs is not None:
            await self.blobs.close()
        await self.store.close()
        _log.info("server stopped")


def _bind(host: str, port: int) -> socket.socket:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
    except OSError:
        sock.close()
        raise
    return sock


def _write_link(path: Path, link: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(link + "\n")
    os.replace(tmp, path)


async def _log_stats(stats: ConnectionStats) -> None:
    last = -1
    while True:
        await asyncio.sleep(_STATS_INTERVAL)
        if stats.open != last:
            last = stats.open
            _log.info("connections: %d open, %d since start", stats.open, stats.total)


#: How often entries of disappearing messages are looked for (an indexed query).
_TIMED_EXPIRY_INTERVAL = 1.0


async def _expire_entries(store: Store, ttl_days: float) -> None:
    """Apply the mailbox time to live (every tenth of it, at most every 10 minutes), and
    delete the entries of disappearing messages once their own expiry passed (every
    second, protocol §6.2)."""
    ttl_ms = int(ttl_days * 86_400_000)
    interval = max(0.1, min(600.0, ttl_ms / 10_000))
    next_ttl = 0.0
    while True:
        now = time.time()
        if now >= next_ttl:
            removed = await store.expire(int(now * 1000) - ttl_ms)
            if removed:
                _log.info("expired %d mailbox entries past their time to live", removed)
            next_ttl = now + interval
        timed = await store.expire_timed(int(time.time() * 1000))
        if timed:
            _log.info("deleted %d entries of disappearing messages", timed)
        await asyncio.sleep(min(interval, _TIMED_EXPIRY_INTERVAL))


def make_store(config: ServerConfig) -> Store:
    """The store ``config`` names: PostgreSQL for a ``postgresql://`` URL, else SQLite."""
    url = config.store_url
    if url is None:
        return SqliteStore(
            config.data_dir / "server.db", max_mailbox_entries=config.max_mailbox_entries
        )
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url, max_mailbox_entries=config.max_mailbox_entries)
    raise LocalError("--store must be a postgresql:// URL (SQLite is the default)")


def _endpoints(config: ServerConfig, port: int) -> list[str]:
    """Our own endpoint, ``--endpoint`` URLs, then lines of ``data_dir/endpoints``.

    The file is re-read on SIGHUP (:meth:`RunningServer.reissue`, docs/censorship.md).
    """
    public_host = config.public_host
    if public_host is None:
        public_host = "127.0.0.1" if config.host in _UNSPECIFIED_HOSTS else config.host
    urls = [endpoint_url(public_host, port), *config.extra_endpoints]
    path = config.data_dir / "endpoints"
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        urls += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return list(dict.fromkeys(urls))[: limits.MAX_ENDPOINTS]


def _relays(config: ServerConfig) -> list[RelayLink]:
    """``--relay`` links, then lines of ``data_dir/relays``; at most 4 (protocol §11.4).

    Raises:
        ProtocolError: a malformed relay link.
    """
    texts = list(config.relays)
    path = config.data_dir / "relays"
    if path.exists():
        lines = path.read_text(encoding="utf-8").splitlines()
        texts += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    return [decode_relay_link(t) for t in dict.fromkeys(texts)][:4]


def _seq_of(signed: SignedDescriptor) -> int:
    return int(msgspec.msgpack.decode(signed.body, type=Descriptor).seq)


async def start(config: ServerConfig) -> RunningServer:
    """Bind, load or create the identity, open the store and start serving.

    Returns once the server accepts connections; the descriptor and link carry the port
    actually bound (so ``port=0`` works).
    """
    data_dir = config.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    tune_io()  # memory per connection (server/tuning.py)
    public_host = config.public_host
    if public_host is None:
        public_host = "127.0.0.1" if config.host in _UNSPECIFIED_HOSTS else config.host
    identity = await asyncio.to_thread(
        load_or_create_identity, config.identity_dir or data_dir, [config.host, public_host]
    )
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    now_ms = int(time.time() * 1000)
    descriptor = identity.descriptor(_endpoints(config, port), now_ms, relays=_relays(config))
    link = identity.link(descriptor)

    store = make_store(config)
    try:
        await store.open()
    except BaseException:
        sock.close()
        raise
    bus: Bus
    if config.bus_url is None:
        bus = LocalBus()
    else:
        redis_bus = RedisBus(config.bus_url)
        try:
            await redis_bus.open()
        except BaseException:
            sock.close()
            await store.close()
            raise
        if isinstance(store, PostgresStore):
            # Each node memoises token and device-list lookups; writes invalidate them
            # on every node through the bus, and a token answered from memory waits for
            # the bus to catch up first, so a revocation holds on every node at once
            # (docs/scaling.md).
            redis_bus.carry_invalidations(store)
            store.share_invalidations(redis_bus.invalidate, redis_bus.caught_up)
        bus = redis_bus
    blobs = BlobService(
        make_blob_store(data_dir, config.store_url),
        BlobPolicy(config.blob_quota_bytes, int(config.mailbox_ttl_days * 86_400_000)),
        lambda: int(time.time() * 1000),
    )
    try:
        await blobs.open()
    except BaseException:
        sock.close()
        await bus.close()
        await store.close()
        raise
    rate_limits = config.rate_limits
    # Several nodes share one claim budget per requester, else n nodes would grant n.
    claim_budgets: ClaimBudgets = (
        LocalClaimBudgets(rate_limits)
        if config.bus_url is None
        else RedisClaimBudgets(config.bus_url, rate_limits)
    )
    deps = SessionDeps(
        store=store,
        bus=bus,
        server_key=identity.server_key,
        descriptor=descriptor,
        limits=f.Limits(max_mailbox_entries=config.max_mailbox_entries),
        rate_limits=rate_limits,
        consumers=ConsumerRegistry(),
        token_buckets=KeyedBuckets(
            rate_limits.token_rate, rate_limits.token_burst, rate_limits.max_tracked_tokens
        ),
        monotonic=time.monotonic,
        now_ms=lambda: int(time.time() * 1000),
        random_bytes=secrets.token_bytes,
        claim_budgets=claim_budgets,
        blobs=blobs,
    )
    stats = ConnectionStats()
    polls = PollSessions(deps, stats.opened, stats.closed)
    front = FrontState(deps, stats.opened, stats.closed)
    uv_config = uvicorn.Config(
        build_app(deps, stats, polls),
        # Every connection starts in the front, which hands /v1/ws to picows and the
        # rest to uvicorn's own HTTP protocol (server/front.py).
        http=front_protocol(front),
        ssl_certfile=str(identity.cert_path),
        ssl_keyfile=str(identity.key_path),
        ssl_context_factory=_tls_context,
        ws="websockets-sansio",
        ws_max_size=WS_MAX_SIZE,
        ws_per_message_deflate=False,  # compression leaks lengths and costs CPU
        lifespan="off",
        log_config=None,
        log_level=config.log_level,
        access_log=False,  # access lines carry client addresses
        timeout_graceful_shutdown=5,
        server_header=False,
    )
    server = _Uvicorn(uv_config)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="samizdat-uvicorn")
    # uvicorn offers no "started" event, only a flag.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if task.done():
        sock.close()
        await bus.close()
        await claim_budgets.close()
        await blobs.close()
        await store.close()
        task.result()
        raise LocalError("server stopped while starting")
    _write_link(data_dir / "server-link", link)
    _log.info("server listening on port %d", port)
    return RunningServer(
        config=config,
        host=config.host,
        port=port,
        link=link,
        descriptor=descriptor,
        identity=identity,
        store=store,
        _uvicorn=server,
        _task=task,
        _stats_task=asyncio.create_task(_log_stats(stats), name="samizdat-stats"),
        _expire_task=asyncio.create_task(
            _expire_entries(store, config.mailbox_ttl_days), name="samizdat-expire"
        ),
        _bus=bus,
        _deps=deps,
        _stats=stats,
        _polls=polls,
        blobs=blobs,
        _front=front,
    )


async def serve(config: ServerConfig) -> None:
    """Run the server until SIGTERM or SIGINT (or cancellation); then shut down cleanly."""
    running = await start(config)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, running.request_stop)
            installed.append(sig)
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, running.on_sighup)
        installed.append(signal.SIGHUP)
    try:
        if config.print_link:
            sys.stdout.write(running.link + "\n")
            sys.stdout.flush()
        await running.wait()
    except asyncio.CancelledError:
        running.request_stop()
        await running.wait()
        raise
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(config: ServerConfig) -> None:
    """Blocking entry point for the CLI: logging to stderr, then :func:`serve` on uvloop
    (its TLS and event loop cost a third of asyncio's per frame, docs/performance.md)."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # A connection allocates thousands of short-lived container objects (TLS, WebSocket,
    # session): with the default threshold (700) a young collection runs every few
    # connections and a full one sweeps every open connection's objects, ~6 % of the CPU
    # of a reconnect storm. Collect young objects less often and leave the modules,
    # classes and functions loaded by now out of every collection (docs/performance.md).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    uvloop.run(serve(config))


def with_port(config: ServerConfig, port: int) -> ServerConfig:
    """A copy of ``config`` listening on ``port`` (handy for restarts in tests)."""
    return dataclasses.replace(config, port=port)
