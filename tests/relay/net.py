"""Probers' and recorders' tools for the relay tests (loopback only)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl

from samizdat.protocol.relay import RelayLink, make_proof, proof_request
from samizdat.transport.dial import now_ms
from tests.censorship.net import _Listener


class Tap(_Listener):
    """A TCP forwarder that records what the client sent (a censor's packet capture)."""

    def __init__(self, host: str, upstream: tuple[str, int]) -> None:
        super().__init__(host)
        self.upstream = upstream
        self.sent = b""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)

        async def client_to_relay() -> None:
            while data := await reader.read(65536):
                self.sent += data
                up_writer.write(data)
                await up_writer.drain()

        async def relay_to_client() -> None:
            while data := await up_reader.read(65536):
                writer.write(data)
                await writer.drain()

        try:
            await asyncio.gather(client_to_relay(), relay_to_client())
        finally:
            up_writer.transport.abort()


def scanner_context() -> ssl.SSLContext:
    """What a scanner or ``curl -k`` does: TLS, no verification."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def exchange(
    host: str, port: int, payload: bytes, *, tls: bool = True, seconds: float = 5.0
) -> bytes:
    """Connect (with TLS or not), send ``payload``, return all bytes until the relay closes
    or ``seconds`` pass."""
    try:
        reader, writer = await asyncio.open_connection(
            host, port, ssl=scanner_context() if tls else None, server_hostname="" if tls else None
        )
    except (OSError, ssl.SSLError):
        return b""  # closed during the TLS handshake
    out = b""
    try:
        writer.write(payload)
        await writer.drain()
        with contextlib.suppress(TimeoutError, OSError, ssl.SSLError):
            async with asyncio.timeout(seconds):
                while not _complete(out) and (data := await reader.read(65536)):
                    out += data
    finally:
        writer.transport.abort()
    return out


def _complete(reply: bytes) -> bool:
    """A whole HTTP response with a body (keep-alive replies do not end the connection)."""
    head, sep, body = reply.partition(b"\r\n\r\n")
    if not sep or not head.startswith(b"HTTP/1.1 ") or head.startswith(b"HTTP/1.1 101"):
        return False
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def handshake(link: RelayLink, server_key: bytes, at_ms: int | None = None) -> bytes:
    """The plaintext of a client's first request (what a relay-side leak would show)."""
    nonce = os.urandom(16)
    proof = make_proof(link, server_key, now_ms() if at_ms is None else at_ms, nonce)
    return proof_request(link, proof, "relay.example")


class Echo(_Listener):
    """An upstream that sends back what it gets (to measure the tunnel itself)."""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
