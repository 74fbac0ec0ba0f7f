"""Channels: one binary protocol frame per message, whatever carries it (protocol §5.1, §5.5).

* :class:`WsChannel` — WebSocket (RFC 6455) over our own pinned TLS stream, driven by
  the sans-I/O ``websockets`` protocol, so the pin is checked before the upgrade request.
* :class:`PollChannel` — HTTPS long-polling for networks and proxies that break
  WebSockets: ``POST /v1/poll/open`` gives a session id, ``/send`` carries one client
  frame, ``/recv`` waits for server frames. Two keep-alive connections: one up, one down.

Both carry exactly the frames of protocol §5 to the same server ``Session``, so delivery
guarantees do not depend on the transport.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import Final, Protocol

import msgspec
from websockets.client import ClientProtocol
from websockets.exceptions import InvalidHandshake, InvalidState, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from samizdat.errors import ConnectError, StageFailed
from samizdat.protocol import limits
from samizdat.transport.http import HttpConnection, HttpResponse
from samizdat.transport.tls import Stream

__all__ = [
    "Channel",
    "WsChannel",
    "PollChannel",
    "POLL_WAIT",
    "POLL_PATH",
    "SESSION_HEADER",
    "CLOSED_HEADER",
]

#: Seconds a ``/recv`` waits on the server for a frame before answering an empty list.
POLL_WAIT: Final = 20
POLL_PATH: Final = "/v1/poll"
SESSION_HEADER: Final = "x-samizdat-session"
CLOSED_HEADER: Final = "x-samizdat-closed"
_READ: Final = 65536
_poll_decoder = msgspec.msgpack.Decoder(list[bytes])


class Channel(Protocol):
    """What :class:`samizdat.client.connection.Connection` needs from a transport."""

    transport: str

    async def send(self, data: bytes) -> None:
        """Send one frame. Raises ConnectError once the channel is broken."""

    async def recv(self) -> bytes:
        """The next frame. Raises ConnectError once the channel is closed."""

    async def close(self) -> None:
        """Close; safe to call twice."""


class WsChannel:
    """A WebSocket client on a pinned TLS stream."""

    transport = "wss"

    def __init__(self, stream: Stream, protocol: ClientProtocol) -> None:
        self._reader, self._writer = stream
        self._protocol = protocol
        self._events: collections.deque[bytes] = collections.deque()
        self._closed = False

    def __repr__(self) -> str:
        return f"WsChannel(closed={self._closed})"

    @classmethod
    async def open(cls, stream: Stream, host: str, port: int, path: str) -> WsChannel:
        """The opening handshake (RFC 6455 §4.1).

        Raises:
            StageFailed: stage ``upgrade``: refused (``http_403``...) or cut.
        """
        authority = f"[{host}]" if ":" in host else host
        protocol = ClientProtocol(
            parse_uri(f"wss://{authority}:{port}{path}"), max_size=limits.MAX_FRAME + 65536
        )
        request = protocol.connect()
        # Like our HTTP requests; a library name here would single us out.
        request.headers["User-Agent"] = "Mozilla/5.0"
        protocol.send_request(request)
        channel = cls(stream, protocol)
        try:
            await channel._flush()
            while True:
                data = await channel._reader.read(_READ)
                if data:
                    protocol.receive_data(data)
                else:
                    protocol.receive_eof()
                for event in protocol.events_received():
                    if isinstance(event, Response):
                        if protocol.handshake_exc is not None:
                            kind = f"http_{event.status_code}"
                            raise StageFailed("upgrade", kind, "the WebSocket upgrade was refused")
                        return channel
                if not data or protocol.handshake_exc is not None:
                    raise StageFailed("upgrade", "cut", "the WebSocket upgrade was cut")
        except (OSError, InvalidHandshake, ProtocolError) as exc:
            channel._writer.transport.abort()
            raise StageFailed("upgrade", "cut", "the WebSocket upgrade was cut") from exc
        except BaseException:
            channel._writer.transport.abort()
            raise

    async def _flush(self) -> None:
        data = b"".join(self._protocol.data_to_send())
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectError("connection closed")
        try:
            self._protocol.send_binary(data)
            await self._flush()
        except (OSError, InvalidState) as exc:
            self._closed = True
            raise ConnectError("connection lost") from exc

    async def recv(self) -> bytes:
        while not self._events:
            if self._closed:
                raise ConnectError("connection closed")
            try:
                data = await self._reader.read(_READ)
                if data:
                    self._protocol.receive_data(data)
                else:
                    self._protocol.receive_eof()
                for event in self._protocol.events_received():
                    if not isinstance(event, Frame):
                        continue
                    if event.opcode is Opcode.BINARY:
                        self._events.append(bytes(event.data))
                    elif event.opcode is Opcode.TEXT:
                        self._closed = True
                        raise ConnectError("server sent text")
                    elif event.opcode is Opcode.CLOSE:
                        self._closed = True
                await self._flush()  # pongs and the closing handshake
            except (OSError, InvalidState, ProtocolError) as exc:
                self._closed = True
                raise ConnectError("connection lost") from exc
            if not data:
                self._closed = True
        return self._events.popleft()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(OSError, InvalidState):
                self._protocol.send_close(1000)
                await asyncio.wait_for(self._flush(), 1.0)
        self._writer.transport.abort()


class PollChannel:
    """HTTPS long-polling to the server's ``/v1/poll`` endpoints (protocol §5.5)."""

    transport = "poll"

    def __init__(
        self,
        up: HttpConnection,
        open_down: Callable[[], Awaitable[HttpConnection]],
        session_id: str,
    ) -> None:
        self._up = up
        self._open_down = open_down
        self._down: HttpConnection | None = None
        self._sid = session_id
        self._queue: collections.deque[bytes] = collections.deque()
        self._closed = False
        self._server_closed = False

    def __repr__(self) -> str:
        return f"PollChannel(closed={self._closed})"

    @classmethod
    async def open(
        cls, up: HttpConnection, open_down: Callable[[], Awaitable[HttpConnection]]
    ) -> PollChannel:
        """Ask the server for a long-poll session.

        Raises:
            StageFailed: stage ``upgrade``: the server (or something on the way) refused.
        """
        response = await up.request("POST", f"{POLL_PATH}/open", seconds=10.0)
        if response.status != 200:
            up.abort()
            raise StageFailed("upgrade", f"http_{response.status}", "long-polling refused")
        session_id = response.body.decode("ascii", "replace")
        if len(session_id) != 64 or any(c not in "0123456789abcdef" for c in session_id):
            up.abort()
            raise StageFailed("upgrade", "bad_answer", "long-polling answered nonsense")
        return cls(up, open_down, session_id)

    def _headers(self) -> list[tuple[str, str]]:
        return [(SESSION_HEADER, self._sid), ("content-type", "application/octet-stream")]

    async def _post(
        self, conn: HttpConnection, path: str, body: bytes, seconds: float
    ) -> tuple[HttpConnection, HttpResponse]:
        """One request of the session; returns the connection that answered it.

        Servers and proxies close idle keep-alive connections and the session lives on: a
        closed connection is replaced, and a request that met a close we could not see
        before writing (``stale``: not acted on, RFC 9112 §9.3.1.1) is sent once more.
        """
        if not conn.reusable:
            conn.abort()
            conn = await self._open_down()
        try:
            return conn, await conn.request("POST", path, body, self._headers(), seconds=seconds)
        except StageFailed as exc:
            if exc.kind != "stale":
                raise
        conn = await self._open_down()
        return conn, await conn.request("POST", path, body, self._headers(), seconds=seconds)

    async def send(self, data: bytes) -> None:
        if self._closed:
            raise ConnectError("connection closed")
        try:
            self._up, response = await self._post(self._up, f"{POLL_PATH}/send", data, 30.0)
        except StageFailed as exc:
            self._closed = True
            raise ConnectError("connection lost") from exc
        if response.status != 204:
            self._closed = True
            raise ConnectError(f"long-poll send refused: {response.status}")

    async def recv(self) -> bytes:
        while not self._queue:
            if self._closed or self._server_closed:
                self._closed = True
                raise ConnectError("connection closed")
            try:
                down = self._down if self._down is not None else await self._open_down()
                self._down, response = await self._post(
                    down, f"{POLL_PATH}/recv", b"", POLL_WAIT + 15
                )
            except StageFailed as exc:
                self._closed = True
                raise ConnectError("connection lost") from exc
            if response.status != 200:
                self._closed = True
                raise ConnectError(f"long-poll receive refused: {response.status}")
            try:
                self._queue.extend(_poll_decoder.decode(response.body))
            except msgspec.DecodeError as exc:
                self._closed = True
                raise ConnectError("long-poll answer does not parse") from exc
            if response.headers.get(CLOSED_HEADER):
                self._server_closed = True
        return self._queue.popleft()

    async def close(self) -> None:
        if not self._closed and not self._server_closed:
            with contextlib.suppress(StageFailed):
                await self._up.request(
                    "POST", f"{POLL_PATH}/close", b"", self._headers(), seconds=2.0
                )
        self._closed = True
        self._up.abort()
        if self._down is not None:
            self._down.abort()
