"""A hostile network on loopback: what censors do, simulated with small honest servers.

Everything binds to 127.0.0.0/8 only. Each piece is what a censor's equipment or a user's
way around it does on the wire:

* :class:`FakeDns` — the national resolver (UDP, dnspython): NXDOMAIN or a wrong address;
* :class:`DohServer` — a DNS-over-HTTPS service abroad (RFC 8484 over real TLS, h11);
* :class:`Impostor` — another TLS server with its own certificate, where poisoned DNS
  points; records whether a client ever got past the handshake;
* :class:`Silent` — accepts TCP and never answers (like a blackhole past the SYN);
* :class:`Middlebox` — forwards TCP; resets connections whose ClientHello names a
  blocked SNI, or every connection once switched to ``block``;
* :class:`NoWebSocketProxy` — a TLS-terminating reverse proxy (as a CDN run by the
  operator, with the server's certificate) that refuses WebSocket upgrades and passes
  every other HTTPS request;
* :class:`Socks5Proxy`, :class:`HttpConnectProxy` — the user's way out, resolving names
  with their own view of the world.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import ssl
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Self

import dns.message
import dns.rcode
import dns.rrset
import h11

from samizdat.server.identity import load_or_create_identity
from tests.e2e.harness import terminate

__all__ = [
    "FakeDns",
    "DohServer",
    "Impostor",
    "Silent",
    "Middlebox",
    "NoWebSocketProxy",
    "Socks5Proxy",
    "HttpConnectProxy",
    "ServerProc",
    "tls_files",
    "free_port",
]

_Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def tls_files(folder: Path) -> tuple[Path, Path, Path]:
    """A fresh CA and leaf (for 127.0.0.1): (chain PEM, key PEM, CA PEM)."""
    identity = load_or_create_identity(folder, ["127.0.0.1"])
    return identity.cert_path, identity.key_path, folder / "tls-ca.pem"


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST, as censors' middleboxes do."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.transport.abort()


async def _splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))


class _Listener:
    """A TCP listener that tracks its connections so ``close`` ends them all."""

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self.port = port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self.handle(reader, writer)
        except (OSError, asyncio.IncompleteReadError, ssl.SSLError, h11.ProtocolError):
            pass
        except asyncio.CancelledError:
            pass  # close() ends us; the task ends here anyway
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.transport.abort()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError

    def reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self.reset_all()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.wait(list(self._tasks))
            await self._server.wait_closed()


class Silent(_Listener):
    """Accepts and never says a word."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass


def client_hello_sni(data: bytes) -> str | None:
    """The server name in a TLS ClientHello record, if any (RFC 8446 §4.1.2, RFC 6066 §3)."""
    try:
        if data[0] != 0x16 or data[5] != 0x01:
            return None
        i = 9 + 2 + 32  # record header, handshake header, version, random
        i += 1 + data[i]  # session id
        i += 2 + int.from_bytes(data[i : i + 2], "big")  # cipher suites
        i += 1 + data[i]  # compression methods
        end = i + 2 + int.from_bytes(data[i : i + 2], "big")
        i += 2
        while i + 4 <= end:
            kind = int.from_bytes(data[i : i + 2], "big")
            length = int.from_bytes(data[i + 2 : i + 4], "big")
            if kind == 0:
                name_length = int.from_bytes(data[i + 7 : i + 9], "big")
                return data[i + 9 : i + 9 + name_length].decode("ascii")
            i += 4 + length
    except (IndexError, UnicodeDecodeError):
        return None
    return None


class Middlebox(_Listener):
    """Forwards to ``upstream``; resets on a blocked SNI, or everything once ``block()``ed."""

    def __init__(
        self, host: str, port: int, upstream: tuple[str, int], blocked_sni: str | None = None
    ) -> None:
        super().__init__(host, port)
        self.upstream = upstream
        self.blocked_sni = blocked_sni
        self.blocking = False
        self.resets = 0
        self.seen_sni: list[str | None] = []

    def block(self) -> None:
        """From now on reset every connection, including the open ones."""
        self.blocking = True
        self.reset_all()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocking:
            self.resets += 1
            _reset(writer)
            return
        head = await reader.read(5)
        if len(head) == 5 and head[0] == 0x16:
            head += await reader.readexactly(int.from_bytes(head[3:5], "big"))
        sni = client_hello_sni(head)
        self.seen_sni.append(sni)
        if self.blocked_sni is not None and sni == self.blocked_sni:
            self.resets += 1
            _reset(writer)
            return
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        up_writer.write(head)
        await _splice((reader, writer), (up_reader, up_writer))


class Impostor(_Listener):
    """A TLS server with a certificate of its own; ``app_data`` is what got past TLS."""

    def __init__(self, host: str, port: int, folder: Path) -> None:
        super().__init__(host, port)
        cert, key, _ = tls_files(folder)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self.handshakes = 0
        self.app_data = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(self._context, ssl_handshake_timeout=5)
        self.handshakes += 1
        while data := await reader.read(65536):
            self.app_data += data


class Socks5Proxy(_Listener):
    """RFC 1928, no authentication, CONNECT only; names resolved with ``hosts``."""

    def __init__(self, host: str, hosts: dict[str, str]) -> None:
        super().__init__(host)
        self.hosts = hosts
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"socks5://{self.host}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        version, count = await reader.readexactly(2)
        await reader.readexactly(count)
        writer.write(b"\x05\x00")
        _, command, _, kind = await reader.readexactly(4)
        if kind == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif kind == 3:
            host = (await reader.readexactly((await reader.readexactly(1))[0])).decode()
        else:
            writer.write(b"\x05\x08\x00\x01" + bytes(6))
            return
        port = int.from_bytes(await reader.readexactly(2), "big")
        self.targets.append(f"{host}:{port}")
        address = self.hosts.get(host, host)
        try:
            upstream = await asyncio.open_connection(address, port)
        except OSError:
            writer.write(b"\x05\x05\x00\x01" + bytes(6))
            return
        writer.write(b"\x05\x00\x00\x01" + socket.inet_aton("127.0.0.1") + b"\x00\x00")
        await writer.drain()
        await _splice((reader, writer), upstream)


class HttpConnectProxy(_Listener):
    """``CONNECT host:port HTTP/1.1`` (RFC 9110 §9.3.6); names resolved with ``hosts``."""

    def __init__(self, host: str, hosts: dict[str, str]) -> None:
        super().__init__(host)
        self.hosts = hosts
        self.targets: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode().split(" ", 2)
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n")
            return
        host, _, port = target.rpartition(":")
        self.targets.append(target)
        try:
            upstream = await asyncio.open_connection(self.hosts.get(host, host), int(port))
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await writer.drain()
        await _splice((reader, writer), upstream)


async def _read_h11(reader: asyncio.StreamReader, conn: h11.Connection) -> list[h11.Event]:
    """Events up to and including the next EndOfMessage (or ConnectionClosed)."""
    events: list[h11.Event] = []
    while True:
        event = conn.next_event()
        if isinstance(event, type):  # the NEED_DATA or PAUSED sentinels
            if event is not h11.NEED_DATA:
                raise h11.LocalProtocolError("paused")
            conn.receive_data(await reader.read(65536))
            continue
        events.append(event)
        if isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
            return events


class NoWebSocketProxy(_Listener):
    """Terminates TLS with the server's own certificate; refuses upgrades, passes the rest."""

    def __init__(self, host: str, port: int, server_dir: Path, upstream: tuple[str, int]):
        super().__init__(host, port)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(server_dir / "tls.pem", server_dir / "tls.key")
        self._upstream_context = ssl.create_default_context(cafile=server_dir / "tls-ca.pem")
        self._upstream_context.check_hostname = False
        self.upstream = upstream
        self.refused = 0
        self.passed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(self._context, ssl_handshake_timeout=5)
        down = h11.Connection(h11.SERVER)
        up_reader, up_writer = await asyncio.open_connection(
            *self.upstream, ssl=self._upstream_context, server_hostname=""
        )
        up = h11.Connection(h11.CLIENT)
        try:
            while True:
                if down.our_state is h11.DONE:
                    down.start_next_cycle()
                    up.start_next_cycle()
                events = await _read_h11(reader, down)
                request = events[0]
                if not isinstance(request, h11.Request):
                    return
                if any(name == b"upgrade" for name, _ in request.headers):
                    self.refused += 1
                    body = b"WebSocket not supported here\n"
                    writer.write(
                        down.send(
                            h11.Response(
                                status_code=403, headers=[("content-length", str(len(body)))]
                            )
                        )
                        or b""
                    )
                    writer.write(down.send(h11.Data(data=body)) or b"")
                    writer.write(down.send(h11.EndOfMessage()) or b"")
                    await writer.drain()
                    return
                self.passed += 1
                for event in events:
                    up_writer.write(up.send(event) or b"")
                await up_writer.drain()
                for event in await _read_h11(up_reader, up):
                    if isinstance(event, h11.ConnectionClosed):
                        return
                    writer.write(down.send(event) or b"")
                await writer.drain()
        finally:
            up_writer.transport.abort()


class FakeDns(asyncio.DatagramProtocol):
    """A UDP resolver: ``answers[name]`` is an address, or None for NXDOMAIN."""

    def __init__(self, answers: dict[str, str | None]) -> None:
        self.answers = answers
        self.queries: list[str] = []
        self._transport: asyncio.DatagramTransport | None = None
        self.address = ""

    async def start(self) -> FakeDns:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: self, local_addr=("127.0.0.1", 0)
        )
        self._transport = transport
        host, port = transport.get_extra_info("sockname")[:2]
        self.address = f"{host}:{port}"
        return self

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(answer(data, self.answers, self.queries), addr)

    async def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


def answer(query_wire: bytes, answers: dict[str, str | None], log: list[str]) -> bytes:
    query = dns.message.from_wire(query_wire)
    response = dns.message.make_response(query)
    name = query.question[0].name.to_text(omit_final_dot=True)
    log.append(name)
    address = answers.get(name)
    if address is None:
        response.set_rcode(dns.rcode.NXDOMAIN)
    elif query.question[0].rdtype == 1:  # A
        response.answer.append(dns.rrset.from_text(name + ".", 60, "IN", "A", address))
    return response.to_wire()


class DohServer(_Listener):
    """RFC 8484 POST over TLS, answering from ``answers``."""

    def __init__(self, folder: Path, answers: dict[str, str | None]) -> None:
        super().__init__("127.0.0.1")
        cert, key, self.ca_file = tls_files(folder)
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(cert, key)
        self.answers = answers
        self.queries: list[str] = []

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/dns-query"

    def verify(self) -> ssl.SSLContext:
        """How a client trusts this service: its CA, host name checked (127.0.0.1)."""
        return ssl.create_default_context(cafile=self.ca_file)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await writer.start_tls(self._context, ssl_handshake_timeout=5)
        conn = h11.Connection(h11.SERVER)
        while True:
            if conn.our_state is h11.DONE:
                conn.start_next_cycle()
            events = await _read_h11(reader, conn)
            if not isinstance(events[0], h11.Request):
                return
            body = b"".join(bytes(e.data) for e in events if isinstance(e, h11.Data))
            out = answer(body, self.answers, self.queries)
            headers = [
                ("content-type", "application/dns-message"),
                ("content-length", str(len(out))),
            ]
            writer.write(conn.send(h11.Response(status_code=200, headers=headers)) or b"")
            writer.write(conn.send(h11.Data(data=out)) or b"")
            writer.write(conn.send(h11.EndOfMessage()) or b"")
            await writer.drain()


class ServerProc:
    """``samizdat server`` as a real process on a loopback address of our choosing."""

    def __init__(self, data_dir: Path, host: str, port: int, *args: str) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.args = args
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def link(self) -> str:
        return (self.data_dir / "server-link").read_text().strip()

    async def start(self) -> ServerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = (self.data_dir.parent / f"{self.data_dir.name}.log").open("ab")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "samizdat", "server", "--data-dir", str(self.data_dir),
            "--listen", f"{self.host}:{self.port}", *self.args,
            stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError("server exited while starting")
            if (self.data_dir / "server-link").exists():
                try:
                    _, writer = await asyncio.open_connection(self.host, self.port)
                except OSError:
                    pass
                else:
                    writer.close()
                    await writer.wait_closed()
                    return self
            await asyncio.sleep(0.05)
        raise RuntimeError("server did not start")

    def hup(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGHUP)

    async def stop(self) -> None:
        await terminate(self.proc)


async def run_cli(home: Path, *args: str, passphrase: str) -> tuple[int, str, str]:
    """A ``samizdat`` command as its own process (the event loop keeps serving meanwhile)."""
    env = dict(os.environ, SAMIZDAT_HOME=str(home), SAMIZDAT_PASSPHRASE=passphrase)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "samizdat", *args,
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
