"""The composition root of the server: store, bus, identity, web app, uvicorn (DESIGN §4, §5).

``samizdat server --data-dir D --listen HOST:PORT`` calls :func:`run`. Tests and other
embedders use :func:`start`, which returns a :class:`RunningServer` once the port is
bound and serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import uvicorn

from samizdat.errors import LocalError
from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.server.bus.local import LocalBus
from samizdat.server.identity import ServerIdentity, endpoint_url, load_or_create_identity
from samizdat.server.ratelimit import KeyedBuckets, RateLimits
from samizdat.server.session import ConsumerRegistry, SessionDeps
from samizdat.server.store.sqlite import SqliteStore
from samizdat.server.web import ConnectionStats, build_app

__all__ = ["ServerConfig", "RunningServer", "parse_listen", "start", "serve", "run"]

_log = logging.getLogger(__name__)

#: Somewhat above MAX_FRAME, so a frame a little too large is answered with our
#: ``frame_too_large`` rather than a bare WebSocket close (1009).
WS_MAX_SIZE: Final = limits.MAX_FRAME + 64 * 1024
_STATS_INTERVAL: Final = 60.0
_UNSPECIFIED_HOSTS: Final = ("0.0.0.0", "::", "")


@dataclass(frozen=True)
class ServerConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    max_mailbox_entries: int = limits.MAX_MAILBOX_ENTRIES
    log_level: str = "info"
    #: Host name or address put in the descriptor's endpoint, when clients reach the
    #: server under another name than ``host`` (e.g. listening on 0.0.0.0).
    public_host: str | None = None
    rate_limits: RateLimits = field(default_factory=RateLimits)
    #: Print the server link on stdout once serving (``samizdat server`` does).
    print_link: bool = True


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
    store: SqliteStore = field(repr=False)
    _uvicorn: _Uvicorn = field(repr=False)
    _task: asyncio.Task[None] = field(repr=False)
    _stats_task: asyncio.Task[None] = field(repr=False)
    _bus: LocalBus = field(repr=False)
    _stopped: bool = False

    def request_stop(self) -> None:
        """Ask for a graceful shutdown (what SIGTERM and SIGINT do)."""
        self._uvicorn.should_exit = True

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
        await asyncio.wait({self._stats_task})
        await self._bus.close()
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


async def start(config: ServerConfig) -> RunningServer:
    """Bind, load or create the identity, open the store and start serving.

    Returns once the server accepts connections; the descriptor and link carry the port
    actually bound (so ``port=0`` works).
    """
    data_dir = config.data_dir
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    public_host = config.public_host
    if public_host is None:
        public_host = "127.0.0.1" if config.host in _UNSPECIFIED_HOSTS else config.host
    identity = await asyncio.to_thread(
        load_or_create_identity, data_dir, [config.host, public_host]
    )
    sock = _bind(config.host, config.port)
    port = sock.getsockname()[1]
    now_ms = int(time.time() * 1000)
    descriptor = identity.descriptor([endpoint_url(public_host, port)], now_ms)
    link = identity.link(descriptor)

    store = SqliteStore(data_dir / "server.db", max_mailbox_entries=config.max_mailbox_entries)
    try:
        await store.open()
    except BaseException:
        sock.close()
        raise
    bus = LocalBus()
    rate_limits = config.rate_limits
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
    )
    stats = ConnectionStats()
    uv_config = uvicorn.Config(
        build_app(deps, stats),
        ssl_certfile=str(identity.cert_path),
        ssl_keyfile=str(identity.key_path),
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
        _bus=bus,
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
    """Blocking entry point for the CLI: logging to stderr, then :func:`serve`."""
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    asyncio.run(serve(config))


def with_port(config: ServerConfig, port: int) -> ServerConfig:
    """A copy of ``config`` listening on ``port`` (handy for restarts in tests)."""
    return dataclasses.replace(config, port=port)
