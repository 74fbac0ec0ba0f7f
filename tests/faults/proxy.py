"""A loopback fault proxy: a SOCKS5 proxy (RFC 1928, CONNECT only) that hurts its traffic.

Clients reach it with ``TransportOptions(proxy=Route("socks5", proxy.url))``. Per chunk of
bytes read it adds latency (``latency`` ± ``jitter`` seconds, order kept within a
direction), resets the connection with probability ``reset`` (TCP RST) and closes it
cleanly with probability ``close`` (FIN, as a NAT or a flaky mobile link does); with
``lifetime`` it also closes every connection that long after it opened.

Why there is no frame-level drop, duplicate or reorder: every byte between client and
server is inside TLS. A record that is dropped, repeated or moved breaks the record
sequence number in the MAC and the TLS layer aborts the connection, so at the TCP level
those faults *are* connection resets; forging them below TLS would only test a TLS
library. The protocol-level equivalent (a frame sent twice, or lost before its answer)
happens here as a retry after a reset, which the deposit id and the ack cursor make safe.
Only 127.0.0.1 targets are accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass
from typing import Self

__all__ = ["FaultProxy", "Faults"]


@dataclass(frozen=True)
class Faults:
    latency: float = 0.2
    jitter: float = 0.15
    reset: float = 0.01
    close: float = 0.01
    #: Close (FIN) every connection this many seconds after it opened (None: never), as a
    #: NAT that forgets, or a censor that lets a connection live a little, does.
    lifetime: float | None = None


@dataclass
class Counters:
    connections: int = 0
    chunks: int = 0
    resets: int = 0
    closes: int = 0


def _abort(writer: asyncio.StreamWriter, rst: bool) -> None:
    sock = writer.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()
    else:
        writer.close()


class FaultProxy:
    def __init__(self, faults: Faults, seed: int = 1) -> None:
        self.faults = faults
        self.counters = Counters()
        self.port = 0
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            upstream = await self._handshake(reader, writer)
            if upstream is not None:
                self._writers.add(upstream[1])
                self.counters.connections += 1
                await self._splice((reader, writer), upstream)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            for w in (writer, upstream[1] if upstream else None):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    async def _handshake(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        _, count = await reader.readexactly(2)
        await reader.readexactly(count)
        writer.write(b"\x05\x00")
        _, _, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            host = ""
        port = int.from_bytes(await reader.readexactly(2), "big")
        if host not in ("127.0.0.1", "localhost"):
            writer.write(b"\x05\x02\x00\x01" + bytes(6))  # not allowed: loopback only
            return None
        try:
            upstream = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))
            return None
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00")
        await writer.drain()
        return upstream

    async def _splice(
        self,
        a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        done = asyncio.Event()
        pipes = [
            asyncio.create_task(self._pipe(a[0], b[1], a[1], done)),
            asyncio.create_task(self._pipe(b[0], a[1], b[1], done)),
        ]
        try:
            try:
                await asyncio.wait_for(done.wait(), self.faults.lifetime)
            except TimeoutError:
                self.counters.closes += 1
                _abort(a[1], rst=False)
                _abort(b[1], rst=False)
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        back: asyncio.StreamWriter,
        done: asyncio.Event,
    ) -> None:
        loop = asyncio.get_running_loop()
        due = 0.0
        f = self.faults
        try:
            while data := await reader.read(65536):
                self.counters.chunks += 1
                roll = self._rng.random()
                if roll < f.reset:
                    self.counters.resets += 1
                    _abort(writer, rst=True)
                    _abort(back, rst=True)
                    return
                if roll < f.reset + f.close:
                    self.counters.closes += 1
                    _abort(writer, rst=False)
                    _abort(back, rst=False)
                    return
                delay = max(0.0, f.latency + self._rng.uniform(-f.jitter, f.jitter))
                # Never deliver before an earlier chunk of the same direction: TCP keeps order.
                due = max(due, loop.time() + delay)
                await asyncio.sleep(due - loop.time())
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            done.set()
