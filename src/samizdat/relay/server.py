"""The relay process: TLS with its own certificate, the proof, a splice or the decoy site.

Order of work on every connection (protocol §11.2): limits first (connection count, the
source address's rate) before any TLS work; the TLS handshake; one HTTP request head.
Only a request carrying a valid, fresh proof for an active link and a configured
upstream makes the relay connect anywhere; everything else is answered as the decoy web
site would answer it, on the same code path a real visitor takes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

from samizdat.errors import ProtocolError
from samizdat.protocol.relay import (
    MAX_HEAD,
    ReplayCache,
    RequestHead,
    check_proof,
    find_proof,
    parse_request_head,
)
from samizdat.relay.config import RelayIdentity, Upstream
from samizdat.relay.decoy import DEFAULT_PAGE, decoy_response, response

__all__ = ["RelayLimits", "Counters", "Relay", "small_tls_buffers"]

_Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]
_SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
_MAX_DISCARD = 64 * 1024


@dataclass(frozen=True)
class RelayLimits:
    #: Open client connections; past it new ones are closed before any TLS.
    max_connections: int = 512
    #: New connections per second from one source address (token bucket).
    address_rate: float = 5.0
    address_burst: float = 20.0
    #: Bytes per second per connection and direction; 0: no cap.
    bandwidth: int = 0
    #: A tunnel with no byte either way for this long is closed.
    idle_timeout: float = 300.0
    #: TLS handshake and first request head must arrive within this.
    handshake_timeout: float = 10.0
    upstream_timeout: float = 5.0
    #: Requests one decoy connection may make (keep-alive), as a web server caps it.
    max_requests: int = 100


@dataclass
class Counters:
    """What ``samizdat relay --stats`` shows. Counts only: no address, no link id."""

    accepted: int = 0
    open: int = 0
    tunnels_open: int = 0
    refused_full: int = 0
    refused_rate: int = 0
    tls_failed: int = 0
    decoy_requests: int = 0
    bad_requests: int = 0
    proofs_ok: int = 0
    proofs_bad: int = 0
    replays: int = 0
    upstream_unknown: int = 0
    upstream_failed: int = 0
    upstream_connections: int = 0
    idle_closed: int = 0
    bytes_up: int = 0
    bytes_down: int = 0


def small_tls_buffers(size: int = 32 * 1024) -> None:
    """Make asyncio's TLS read buffer ``size`` bytes, for this whole process.

    Python 3.11's ``asyncio.sslproto.SSLProtocol`` allocates (and zero-fills) a 256 KiB
    buffer per TLS connection, which made a relay cost ~290 KiB per idle connection
    (bench/relay.py). A TLS record carries at most 16 KiB, so 32 KiB loses nothing.
    Only the ``samizdat relay`` process calls this: it serves nothing else.
    """
    import asyncio.sslproto

    asyncio.sslproto.SSLProtocol.max_size = size


class _Buckets:
    """Token buckets per source address, bounded (oldest forgotten first)."""

    def __init__(self, rate: float, burst: float, max_entries: int = 10_000) -> None:
        self._rate, self._burst, self._max = rate, burst, max_entries
        self._state: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, address: str, now: float) -> bool:
        tokens, last = self._state.pop(address, (self._burst, now))
        tokens = min(self._burst, tokens + (now - last) * self._rate)
        ok = tokens >= 1.0
        self._state[address] = (tokens - 1.0 if ok else tokens, now)
        while len(self._state) > self._max:
            self._state.popitem(last=False)
        return ok


class Relay:
    """One relay listener (and optionally a loopback metrics listener)."""

    def __init__(
        self,
        identity: RelayIdentity,
        context: ssl.SSLContext,
        upstreams: dict[bytes, Upstream],
        limits: RelayLimits | None = None,
        decoy: bytes = DEFAULT_PAGE,
        record: Path | None = None,
    ) -> None:
        self.identity = identity
        self.counters = Counters()
        self._context = context
        self._upstreams = upstreams
        self._limits = limits or RelayLimits()
        self._decoy = decoy
        self._replays = ReplayCache()
        self._buckets = _Buckets(self._limits.address_rate, self._limits.address_burst)
        self._record: BinaryIO | None = record.open("ab") if record is not None else None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[object]] = set()

    async def listen(self, host: str, port: int) -> int:
        """Start accepting on ``host:port``; returns the port (for port 0)."""
        # The head limit is checked by the parser; a larger buffer keeps tunnels fast.
        server = await asyncio.start_server(self._accept, host, port, limit=8 * MAX_HEAD)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    async def listen_metrics(self, host: str, port: int) -> int:
        """Counters as JSON to any HTTP request on ``host:port`` (keep it on loopback)."""
        server = await asyncio.start_server(self._metrics, host, port)
        self._servers.append(server)
        bound: int = server.sockets[0].getsockname()[1]
        return bound

    def stats(self) -> dict[str, int]:
        return asdict(self.counters)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        for server in self._servers:
            await server.wait_closed()
        if self._record is not None:
            self._record.close()

    # -- connections -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        c = self.counters
        c.accepted += 1
        peer = writer.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        if c.open >= self._limits.max_connections:
            c.refused_full += 1
            await _close(writer)
            return
        if not self._buckets.allow(address, time.monotonic()):
            c.refused_rate += 1
            await _close(writer)
            return
        c.open += 1
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, TimeoutError):
            pass
        except asyncio.CancelledError:
            pass  # close() ends us
        finally:
            c.open -= 1
            self._tasks.discard(task)
            writer.transport.abort()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        limits = self._limits
        try:
            await writer.start_tls(self._context, ssl_handshake_timeout=limits.handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError):
            self.counters.tls_failed += 1
            return
        for number in range(limits.max_requests):
            timeout = limits.handshake_timeout if number == 0 else limits.idle_timeout
            head = await self._read_head(reader, writer, timeout)
            if head is None:
                return
            if number == 0 and await self._maybe_tunnel(head, reader, writer):
                return
            self.counters.decoy_requests += 1
            if not await self._discard_body(head, reader, writer):
                return
            close = (
                number == limits.max_requests - 1
                or head.version == "HTTP/1.0"
                or (head.header("connection") or "").lower() == "close"
            )
            writer.write(decoy_response(head, self._decoy, close=close))
            await writer.drain()
            if close:
                return

    async def _read_head(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seconds: float
    ) -> RequestHead | None:
        try:
            data = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
        except TimeoutError:
            return None
        except asyncio.IncompleteReadError as exc:
            if exc.partial:  # bytes, then EOF: answered as a web server would
                await self._bad(writer)
            return None
        except asyncio.LimitOverrunError:
            await self._bad(writer)
            return None
        try:
            return parse_request_head(data)
        except ProtocolError:
            await self._bad(writer)
            return None

    async def _bad(self, writer: asyncio.StreamWriter) -> None:
        self.counters.bad_requests += 1
        writer.write(response(400, close=True))
        with contextlib.suppress(OSError, ConnectionError):
            await writer.drain()

    async def _discard_body(
        self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        if head.header("transfer-encoding") is not None:
            writer.write(response(411, close=True))
            await writer.drain()
            return False
        length = head.header("content-length") or "0"
        # isascii: str.isdigit() is also true of "²", which int() refuses.
        if not (length.isascii() and length.isdigit()) or int(length) > _MAX_DISCARD:
            writer.write(response(413, close=True))
            await writer.drain()
            return False
        if int(length):
            await asyncio.wait_for(reader.readexactly(int(length)), self._limits.idle_timeout)
        return True

    async def _maybe_tunnel(
        self, head: RequestHead, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Tunnel if ``head`` carries a valid proof; False: serve it as the site would."""
        proof = find_proof(head)
        if proof is None:
            return False
        c = self.counters
        now_ms = time.time_ns() // 1_000_000
        if not self.identity.active(proof.link_id) or not check_proof(
            proof, self.identity.secret(proof.link_id), now_ms
        ):
            c.proofs_bad += 1
            return False
        if not self._replays.fresh(proof.nonce, now_ms):
            c.replays += 1
            return False
        c.proofs_ok += 1
        upstream = self._upstreams.get(proof.server_key)
        if upstream is None:
            # A link holder asked for a server we do not serve: never an open proxy.
            c.upstream_unknown += 1
            writer.write(response(421, close=True))
            await writer.drain()
            return True
        up = await self._connect(upstream)
        if up is None:
            c.upstream_failed += 1
            writer.write(response(502, close=True))
            await writer.drain()
            return True
        c.upstream_connections += 1
        writer.write(_SWITCH)
        await writer.drain()
        c.tunnels_open += 1
        try:
            await self._splice((reader, writer), up)
        finally:
            c.tunnels_open -= 1
            up[1].transport.abort()
        return True

    async def _connect(self, upstream: Upstream) -> _Stream | None:
        for host, port in upstream.addresses:
            try:
                return await asyncio.wait_for(
                    asyncio.open_connection(host, port), self._limits.upstream_timeout
                )
            except (OSError, TimeoutError):
                continue
        return None

    async def _splice(self, client: _Stream, upstream: _Stream) -> None:
        # [time of the last byte either way, whether the tunnel ended idle]
        last: list[float] = [time.monotonic(), 0.0]
        pumps = [
            asyncio.ensure_future(self._pump(client[0], upstream[1], last, up=True)),
            asyncio.ensure_future(self._pump(upstream[0], client[1], last, up=False)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
            if last[1]:
                self.counters.idle_closed += 1
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.wait(pumps)
            for pump in pumps:
                if not pump.cancelled():
                    pump.exception()  # retrieved

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        last: list[float],
        *,
        up: bool,
    ) -> None:
        limits = self._limits
        started = time.monotonic()
        sent = 0
        while True:
            try:
                data = await asyncio.wait_for(reader.read(65536), limits.idle_timeout)
            except TimeoutError:
                if time.monotonic() - last[0] >= limits.idle_timeout:
                    last[1] = 1.0
                    return
                continue
            if not data:
                return
            last[0] = time.monotonic()
            if up:
                self.counters.bytes_up += len(data)
            else:
                self.counters.bytes_down += len(data)
            if self._record is not None:
                self._record.write(data)
                self._record.flush()
            writer.write(data)
            await writer.drain()
            if limits.bandwidth:
                sent += len(data)
                ahead = sent / limits.bandwidth - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    async def _metrics(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            body = json.dumps(self.stats()).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        finally:
            writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    # A plain FIN before any TLS: what an overloaded server's accept-and-drop looks like.
    writer.close()
    with contextlib.suppress(OSError, ConnectionError):
        await writer.wait_closed()
