"""One connection to one server, from its verified descriptor (DESIGN §4, protocol §5).

TLS trusts only the descriptor's own CA (``tls_ca``) with the hostname check off, and
then checks explicitly that SHA-256 of the leaf certificate's SubjectPublicKeyInfo equals
``tls_pin`` before any frame is sent: a man in the middle with another certificate
fails even if it somehow chains to that CA.

After ``Hello``/``Welcome`` (whose descriptor must be signed by the key we already
trust), requests are matched to replies by ``rid`` with futures; ``Deliver`` frames go
to a queue that :meth:`Connection.next_delivery` drains.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
from typing import TypeVar

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import WebSocketException

from samizdat import __version__
from samizdat.errors import ConnectError, ErrorCode, ProtocolError, ServerRefused
from samizdat.protocol import frames, limits
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor

__all__ = ["CONNECT_TIMEOUT", "REQUEST_TIMEOUT", "Connection", "now_ms", "pin_of"]

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 10.0
REQUEST_TIMEOUT = 30.0
_F = TypeVar("_F")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def pin_of(certificate_der: bytes) -> bytes:
    """SHA-256 of a certificate's SubjectPublicKeyInfo (DER)."""
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def _ssl_context(descriptor: Descriptor) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The pin, not a name, identifies the server (DESIGN §4): IP literals must work.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    try:
        context.load_verify_locations(cadata=descriptor.tls_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConnectError("the server descriptor carries an unusable certificate") from exc
    return context


class Connection:
    """A live, hello'd connection. Use :meth:`open`; never shows what it carries."""

    def __init__(self, ws: ClientConnection, welcome: frames.Welcome, descriptor: Descriptor):
        self._ws = ws
        self.welcome = welcome
        self.descriptor = descriptor
        self.signed_descriptor: SignedDescriptor = welcome.descriptor
        self._next_rid = 1
        self._pending: dict[int, asyncio.Future[frames.ServerFrame]] = {}
        self._deliveries: asyncio.Queue[frames.Deliver | None] = asyncio.Queue()
        self._closed_reason: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(cls, signed: SignedDescriptor, server_key: bytes) -> Connection:
        """Connect to the first endpoint of a server that completes TLS, the pin and hello.

        Raises:
            ConnectError: no endpoint worked (the message says why, without secrets).
        """
        descriptor = _open(signed, server_key)
        context = _ssl_context(descriptor)
        reasons: list[str] = []
        for endpoint in descriptor.endpoints:
            if endpoint.transport != "wss":
                continue
            try:
                return await asyncio.wait_for(
                    cls._open_one(endpoint.url, context, descriptor, server_key),
                    CONNECT_TIMEOUT,
                )
            except ConnectError as exc:
                reasons.append(str(exc))
            except (OSError, TimeoutError, WebSocketException, ssl.SSLError) as exc:
                reasons.append(f"{type(exc).__name__}")
        raise ConnectError("cannot reach the server: " + ("; ".join(reasons) or "no endpoint"))

    @classmethod
    async def _open_one(
        cls, url: str, context: ssl.SSLContext, descriptor: Descriptor, server_key: bytes
    ) -> Connection:
        ws = await connect(
            url,
            ssl=context,
            max_size=limits.MAX_FRAME,
            max_queue=16,
            compression=None,
            open_timeout=CONNECT_TIMEOUT,
        )
        try:
            ssl_object = ws.transport.get_extra_info("ssl_object")
            peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
            if peer is None or pin_of(peer) != descriptor.tls_pin:
                raise ConnectError("TLS key does not match the pin (possible interception)")
            await ws.send(
                frames.encode(
                    frames.Hello(versions=list(frames.PROTOCOL_VERSIONS), client=__version__)
                )
            )
            data = await ws.recv(decode=False)
            reply = frames.decode_server_frame(data)
            if isinstance(reply, frames.Error):
                raise ConnectError(f"server refused the hello: {reply.code}")
            if not isinstance(reply, frames.Welcome):
                raise ConnectError("server did not answer the hello with welcome")
            try:
                fresh = open_descriptor(reply.descriptor, now_ms(), expected_key=server_key)
            except ProtocolError as exc:
                raise ConnectError(f"server sent a bad descriptor: {exc.message}") from exc
        except BaseException:
            await ws.close()
            raise
        return cls(ws, reply, fresh)

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(self, frame: frames.ClientFrame, expect: type[_F]) -> _F:
        """Send a request and wait for its reply, which must be of type ``expect``.

        Raises:
            ProtocolError: the reply had an unexpected type.
            (and everything :meth:`call_any` raises)
        """
        reply = await self.call_any(frame)
        if not isinstance(reply, expect):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"expected {expect.__name__}, got {type(reply).__name__}"
            )
        return reply

    async def call_any(self, frame: frames.ClientFrame) -> frames.ServerFrame:
        """Send a request (its ``rid`` is replaced) and wait for its reply.

        Raises:
            ServerRefused: the server answered ``Error``.
            ConnectError: the connection closed or the server did not answer in time.
        """
        if self._closed_reason is not None:
            raise ConnectError(f"connection closed: {self._closed_reason}")
        rid = self._next_rid
        self._next_rid = (self._next_rid + 1) % 2**31
        # msgspec structs are frozen: rebuild with our rid.
        frame = msgspec.structs.replace(frame, rid=rid)
        future: asyncio.Future[frames.ServerFrame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._ws.send(frames.encode(frame))
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except (WebSocketException, OSError) as exc:
            raise ConnectError("connection lost") from exc
        except TimeoutError as exc:
            raise ConnectError("the server did not answer in time") from exc
        finally:
            self._pending.pop(rid, None)
        if isinstance(reply, frames.Error):
            raise ServerRefused(reply.code, reply.message)
        return reply

    async def next_delivery(self, idle: float | None) -> frames.Deliver | None:
        """The next ``Deliver`` frame, or None after ``idle`` seconds without one.

        Raises:
            ConnectError: the connection closed.
        """
        if self._closed_reason is not None and self._deliveries.empty():
            raise ConnectError(f"connection closed: {self._closed_reason}")
        try:
            item = await asyncio.wait_for(self._deliveries.get(), idle)
        except TimeoutError:
            return None
        if item is None:
            raise ConnectError(f"connection closed: {self._closed_reason}")
        return item

    async def _read_loop(self) -> None:
        reason = "closed"
        try:
            async for data in self._ws:
                if isinstance(data, str):
                    reason = "server sent text"
                    break
                frame = frames.decode_server_frame(data)
                rid = getattr(frame, "rid", None)
                if isinstance(frame, frames.Deliver):
                    self._deliveries.put_nowait(frame)
                elif isinstance(frame, frames.DescriptorUpdate):
                    self._update_descriptor(frame.descriptor)
                elif rid is not None and rid in self._pending:
                    self._pending.pop(rid).set_result(frame)
                elif isinstance(frame, frames.Error):
                    reason = f"server: {frame.code}"
                    break
        except ProtocolError as exc:
            reason = f"bad frame from server: {exc.code.value}"
        except (WebSocketException, OSError) as exc:
            reason = type(exc).__name__
        finally:
            self._closed_reason = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectError(f"connection closed: {reason}"))
            self._pending.clear()
            self._deliveries.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._ws.close()

    def _update_descriptor(self, signed: SignedDescriptor) -> None:
        try:
            fresh = open_descriptor(signed, now_ms(), expected_key=self.descriptor.server_key)
        except ProtocolError:
            log.info("ignored a descriptor update that does not verify")
            return
        if fresh.seq > self.descriptor.seq:
            self.descriptor = fresh
            self.signed_descriptor = signed

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader

    def __repr__(self) -> str:
        return f"Connection(closed={self.closed})"


def _open(signed: SignedDescriptor, server_key: bytes) -> Descriptor:
    try:
        return open_descriptor(signed, now_ms(), expected_key=server_key)
    except ProtocolError as exc:
        raise ConnectError(f"the server descriptor does not verify: {exc.message}") from exc
