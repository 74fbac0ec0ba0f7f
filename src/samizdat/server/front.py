"""The server's front: every TLS connection starts here (DESIGN §5, docs/performance.md).

uvicorn owns the listener and the TLS layer (the event loop's: uvloop's under
``samizdat server``), and creates a :class:`FrontProtocol` per connection. That protocol
reads the request head only. A WebSocket upgrade to ``/v1/ws`` is handed to picows (a
Cython WebSocket implementation): ``transport.set_protocol`` then the buffered bytes fed
in, and a :class:`WsConnection` drives a :class:`Session` from picows' callbacks.
Everything else (``GET /``, ``/v1/health``, long-polling, other paths, garbage) is handed
the same way to uvicorn's own HTTP protocol, which answers exactly as it did when it
served every connection: what a prober sees of non-WebSocket requests does not change.

An idle WebSocket connection has no task: a received frame starts one worker coroutine
that handles the frames pending in order and ends when none are; frames the session
produces (its outbox's sink) are encoded at once and written together at the end of the
event loop's turn: one transport write, so one TLS record and one ``send`` system call,
for all a connection's frames of a turn (its answers to a pipelined burst, deliveries and
acknowledgements woken by one group commit), in order. When the transport's write buffer
fills, the outbox queues and then the handlers wait; when many received frames wait for
the worker, the connection stops reading.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import logging
import struct
from collections.abc import Callable
from typing import Any, Final, cast

from picows import (
    WSAutoPingStrategy,
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeRequest,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)
from picows.picows import WSProtocol  # type: ignore[attr-defined]
from uvicorn.config import Config
from uvicorn.protocols.http.auto import AutoHTTPProtocol
from uvicorn.server import ServerState

from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.server.session import Session, SessionDeps

__all__ = [
    "WS_PATH",
    "WS_MAX_SIZE",
    "FrontState",
    "front_protocol",
    "frame_messages",
    "WsConnection",
]

#: The path of the WebSocket endpoint (protocol.md §2).
WS_PATH: Final = "/v1/ws"
#: Somewhat above MAX_FRAME, so a message a little too large is answered with our
#: ``frame_too_large`` rather than a bare WebSocket close (1009).
WS_MAX_SIZE: Final = limits.MAX_FRAME + 64 * 1024
#: Keepalive, as uvicorn's defaults were: a ping after 20 s without anything received,
#: the connection dropped if nothing (its pong) comes within 20 s more. One sweep over
#: all connections every ``PING_SWEEP`` s does it (not a task or timer per connection),
#: so each figure may be up to that much later.
PING_IDLE: Final = 20.0
PING_TIMEOUT: Final = 20.0
PING_SWEEP: Final = 5.0
#: picows' initial read buffer per connection; it doubles while a frame does not fit.
READ_BUFFER: Final = 1024
#: Longest request head read before handing the connection to uvicorn anyway (h11's
#: own limit, so uvicorn answers an oversized head as it always did).
MAX_HEAD: Final = 16 * 1024
#: Received frames waiting for the worker before the connection stops reading.
MAX_PENDING: Final = 8
#: Bytes of outgoing frames held for the end of the turn beyond which they are written at
#: once: the transport must see them to push back (``pause_writing``) before a handler
#: that produces many frames in one step (a backlog's deliveries) piles up more. uvloop's
#: and asyncio's default high-water mark.
FLUSH_AT: Final = 64 * 1024

_WS_PREFIX: Final = b"GET " + WS_PATH.encode()
_log = logging.getLogger(__name__)


class _QuietLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """picows' logger: no per-connection INFO lines (they carry client addresses), and,
    not being a ``logging.Logger``, no child logger created per connection."""

    def info(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass

    def debug(self, msg: object, *args: Any, **kwargs: Any) -> None:
        pass


_picows_log = _QuietLog(logging.getLogger("samizdat.server.front.picows"), {})


class FrontState:
    """What every connection of one server shares."""

    def __init__(
        self,
        deps: SessionDeps,
        opened: Callable[[Session], None],
        closed: Callable[[Session], None],
    ) -> None:
        self.deps = deps
        self.opened = opened
        self.closed = closed
        #: uvicorn's: graceful shutdown calls ``shutdown()`` on each and waits for all
        #: to leave. Set once uvicorn builds the first protocol.
        self.server_state: ServerState | None = None
        #: Tasks closing sessions (kept referenced until done).
        self.closing: set[asyncio.Task[None]] = set()
        #: Open WebSocket connections, for the keepalive sweep.
        self.live: set[WsConnection] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._headers_from: list[tuple[bytes, bytes]] | None = None
        self._headers: list[tuple[str, str]] = []

    def __repr__(self) -> str:
        return f"FrontState(live={len(self.live)}, closing={len(self.closing)})"

    def response_headers(self) -> list[tuple[str, str]]:
        """uvicorn's headers for every answer (``date``), for picows' 101: the WebSocket
        handshake answer then looks like every other answer of this server."""
        state = self.server_state
        current = state.default_headers if state is not None else []
        if current is not self._headers_from:  # uvicorn makes a new list each second
            self._headers_from = current
            self._headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in current]
        return self._headers

    def add(self, connection: WsConnection) -> None:
        self.live.add(connection)
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().create_task(
                self._keepalive(), name="samizdat-keepalive"
            )

    async def _keepalive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PING_SWEEP)
            now = loop.time()
            for connection in list(self.live):
                connection.keepalive(now)

    async def close(self) -> None:
        """Stop the keepalive sweep (the server is shutting down)."""
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            await asyncio.wait([sweeper])


def front_protocol(front: FrontState) -> type[asyncio.Protocol]:
    """The protocol class to give uvicorn as ``http``: it builds one per connection."""

    class _Front(FrontProtocol):
        _front = front

    return _Front


class FrontProtocol(asyncio.Protocol):
    """The first protocol of a connection: reads the request head, then hands over."""

    _front: FrontState

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._config = config
        self._server_state = server_state
        self._app_state = app_state
        self._loop = _loop
        self._transport: asyncio.Transport | None = None
        self._head = b""
        self._front.server_state = server_state

    # uvicorn's shutdown calls this on every connection it knows.
    def shutdown(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        _connections(self._server_state).add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        _connections(self._server_state).discard(self)

    def eof_received(self) -> bool | None:
        # The peer stopped sending before a whole head: let uvicorn see what came.
        http = self._to_http(self._head)
        return http.eof_received()

    def data_received(self, data: bytes) -> None:
        head = self._head + data if self._head else data
        if not (head.startswith(_WS_PREFIX) or _WS_PREFIX.startswith(head)):
            self._to_http(head)
            return
        end = head.find(b"\r\n\r\n")
        if end < 0:
            if len(head) < MAX_HEAD:
                self._head = head
            else:
                self._to_http(head)
            return
        if is_ws_upgrade(head[:end]):
            self._to_ws(head)
        else:
            self._to_http(head)

    def _hand_over(self, protocol: asyncio.BaseProtocol) -> asyncio.Transport:
        transport = self._transport
        assert transport is not None
        self._transport = None
        self._head = b""
        _connections(self._server_state).discard(self)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        return transport

    def _to_http(self, data: bytes) -> asyncio.Protocol:
        http: asyncio.Protocol = AutoHTTPProtocol(  # type: ignore[call-arg]
            config=self._config,
            server_state=self._server_state,
            app_state=self._app_state,
            _loop=self._loop,
        )
        self._hand_over(http)
        if data:
            http.data_received(data)
        return http

    def _to_ws(self, data: bytes) -> None:
        front = self._front
        protocol = WSProtocol(
            None,  # host and port: client side only
            None,  # path: client side only
            False,  # server side
            lambda request: _listener(front, request),
            _picows_log,
            True,  # disconnect on an exception in a callback
            None,  # no handshake timeout: the whole request is here
            False,  # no auto ping: its task per connection costs ~1.7 KiB (our sweep)
            PING_IDLE,
            PING_TIMEOUT,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            True,  # answer pings
            WS_MAX_SIZE,
            None,  # no extra response headers
            READ_BUFFER,
        )
        self._hand_over(protocol)
        view = memoryview(data)
        while view:
            buffer = protocol.get_buffer(len(view))
            n = min(len(buffer), len(view))
            buffer[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]


def _connections(server_state: ServerState) -> set[Any]:
    return cast(set[Any], server_state.connections)


def is_ws_upgrade(head: bytes) -> bool:
    """Whether a request head (without its blank line) asks for a WebSocket on /v1/ws.

    Only a plain, well-formed upgrade qualifies; anything odd goes to uvicorn, which
    answers it as before.
    """
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[0] != b"GET" or parts[2] != b"HTTP/1.1":
        return False
    if parts[1].partition(b"?")[0] != WS_PATH.encode():
        return False
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip() or name.lower() in headers:
            return False
        headers[name.lower()] = value.strip()
    if b"transfer-encoding" in headers or headers.get(b"content-length", b"0") != b"0":
        return False
    upgrade = {t.strip().lower() for t in headers.get(b"upgrade", b"").split(b",")}
    connection = {t.strip().lower() for t in headers.get(b"connection", b"").split(b",")}
    if b"websocket" not in upgrade or b"upgrade" not in connection:
        return False
    if headers.get(b"sec-websocket-version") != b"13" or b"host" not in headers:
        return False
    try:
        key = base64.b64decode(headers.get(b"sec-websocket-key", b""), validate=True)
    except ValueError:
        return False
    return len(key) == 16


_HEAD_16: Final = struct.Struct("!BBH")
_HEAD_64: Final = struct.Struct("!BBQ")
#: FIN set, opcode binary (RFC 6455 §5.2); a server's frames are not masked (§5.1).
_FIN_BINARY: Final = 0x82


def frame_messages(messages: list[bytes]) -> bytes:
    """Binary messages as unfragmented, unmasked server frames, one after another
    (RFC 6455 §5.2: the 7-bit length, or 126 and 16 bits, or 127 and 64 bits)."""
    parts: list[bytes] = []
    for message in messages:
        size = len(message)
        if size < 126:
            parts.append(bytes((_FIN_BINARY, size)))
        elif size < 1 << 16:
            parts.append(_HEAD_16.pack(_FIN_BINARY, 126, size))
        else:
            parts.append(_HEAD_64.pack(_FIN_BINARY, 127, size))
        parts.append(message)
    return b"".join(parts)


def _listener(front: FrontState, request: WSUpgradeRequest) -> WSUpgradeResponseWithListener:
    response = WSUpgradeResponse.create_101_response(front.response_headers())
    return WSUpgradeResponseWithListener(response, WsConnection(front))


class WsConnection(WSListener):
    """One WebSocket connection: picows' callbacks drive its :class:`Session`."""

    def __init__(self, front: FrontState) -> None:
        self._front = front
        self._transport: WSTransport | None = None
        self._session: Session | None = None
        self._pending: collections.deque[bytes | None] | None = None  # made when needed
        #: Encoded frames of this loop turn not yet written (made when needed).
        self._out: list[bytes] | None = None
        self._out_size = 0
        self._worker: asyncio.Task[None] | None = None
        self._parts: list[bytes] | None = None
        self._parts_size = 0
        self._parts_text = False
        self._reading = True
        #: Loop time anything last came in, and when our unanswered ping went out (0: none).
        self._seen = 0.0
        self._pinged = 0.0

    def __repr__(self) -> str:
        return f"WsConnection(session={self._session!r})"

    # -- picows callbacks ---------------------------------------------------------------

    def on_ws_connected(self, transport: WSTransport) -> None:
        self._transport = transport
        self._seen = asyncio.get_running_loop().time()
        # The upgrade's headers are kept by picows for the connection's life: ~1 KiB.
        transport.request.headers.clear()
        transport.response.headers.clear()
        self._front.add(self)
        session = Session(self._front.deps, sink=self._send)
        self._session = session
        self._front.opened(session)
        _log.debug("WebSocket connection opened")  # no address: logs carry none
        if self._front.server_state is not None:
            _connections(self._front.server_state).add(self)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if self._pinged or frame.last_in_buffer:
            self._pinged = 0.0
            self._seen = asyncio.get_running_loop().time()
        kind = frame.msg_type
        if kind == WSMsgType.BINARY or kind == WSMsgType.TEXT:
            if self._parts is not None:
                self._close(WSCloseCode.PROTOCOL_ERROR)
                return
            if not frame.fin:
                self._parts = [frame.get_payload_as_bytes()]
                self._parts_size = len(self._parts[0])
                self._parts_text = kind == WSMsgType.TEXT
                return
            self._received(frame.get_payload_as_bytes() if kind == WSMsgType.BINARY else None)
        elif kind == WSMsgType.CONTINUATION:
            parts = self._parts
            if parts is None:
                self._close(WSCloseCode.PROTOCOL_ERROR)
                return
            part = frame.get_payload_as_bytes()
            self._parts_size += len(part)
            if self._parts_size > WS_MAX_SIZE:
                self._close(WSCloseCode.MESSAGE_TOO_BIG)
                return
            parts.append(part)
            if frame.fin:
                self._parts = None
                self._received(None if self._parts_text else b"".join(parts))
        elif kind == WSMsgType.CLOSE:
            self._close(WSCloseCode.OK)
        # Pings are answered by picows; unsolicited pongs are ignored.

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        session = self._session
        if session is None:
            return
        self._session = None
        self._transport = None
        self._out = None  # nowhere to write them
        self._front.live.discard(self)
        _log.debug("WebSocket connection closed")
        task = asyncio.get_running_loop().create_task(self._closed(session, self._worker))
        self._front.closing.add(task)
        task.add_done_callback(self._front.closing.discard)

    def pause_writing(self) -> None:
        if self._session is not None:
            self._session.pause_output()

    def resume_writing(self) -> None:
        if self._session is not None:
            self._session.resume_output()

    def keepalive(self, now: float) -> None:
        """The sweep: ping a connection silent for ``PING_IDLE``, drop one that did not
        answer within ``PING_TIMEOUT``."""
        transport = self._transport
        if transport is None:
            return
        if self._pinged:
            if now - self._pinged >= PING_TIMEOUT:
                transport.disconnect(False)
        elif now - self._seen >= PING_IDLE:
            self._pinged = now
            self._flush()
            transport.send_ping()

    # uvicorn's graceful shutdown calls this on every connection it knows.
    def shutdown(self) -> None:
        self._close(WSCloseCode.SERVICE_RESTART)

    # -- in and out ---------------------------------------------------------------------

    def _received(self, data: bytes | None) -> None:
        """A whole message (``None``: a text one): queue it for the worker."""
        session = self._session
        if session is None or session.closing:
            return
        if self._pending is None:
            self._pending = collections.deque()
        self._pending.append(data)
        if self._worker is None:
            self._worker = asyncio.get_running_loop().create_task(self._work(session))
        elif len(self._pending) >= MAX_PENDING and self._reading and self._transport:
            self._reading = False
            self._transport.underlying_transport.pause_reading()

    async def _work(self, session: Session) -> None:
        pending = self._pending
        assert pending is not None
        try:
            while pending and not session.closing:
                data = pending.popleft()
                if not self._reading and self._transport is not None:
                    self._reading = True
                    self._transport.underlying_transport.resume_reading()
                if data is None:
                    await session.receive_text()
                else:
                    await session.receive_bytes(data)
            self._pending = None  # ~0.6 KiB an idle connection need not hold
        except Exception as exc:
            if not isinstance(exc, (OSError, RuntimeError)):
                _log.error("connection failed: %s", type(exc).__name__)
            self._close(None)
        finally:
            self._worker = None

    def _send(self, frame: f.ServerFrame | None) -> None:
        """The session's sink: send ``frame`` at the end of this loop turn, with the
        connection's other frames of the turn (``None``: close the connection after them).
        """
        if self._transport is None:
            return
        if frame is None:
            self._close(WSCloseCode.OK)
            return
        data = f.encode(frame)
        out = self._out
        if out is None:
            out = self._out = []
            self._out_size = 0
            asyncio.get_running_loop().call_soon(self._flush)
        out.append(data)
        self._out_size += len(data)
        if self._out_size >= FLUSH_AT:
            self._flush()

    def _flush(self) -> None:
        """Write the frames held for this turn in one transport write."""
        out, self._out = self._out, None
        transport = self._transport
        if out is None or transport is None:
            return
        if len(out) == 1:
            # picows frames it in C (and drops it after our close frame).
            transport.send(WSMsgType.BINARY, out[0])
        elif not (transport.is_close_frame_sent or transport.is_disconnected):
            transport.underlying_transport.write(frame_messages(out))

    def _close(self, code: WSCloseCode | None) -> None:
        """Write what this turn produced, then the close frame (``None``: none), then
        close the transport once its buffer is written."""
        transport = self._transport
        if transport is None:
            return
        self._flush()
        if code is not None:
            transport.send_close(code)
        transport.disconnect()

    async def _closed(self, session: Session, worker: asyncio.Task[None] | None) -> None:
        self._pending = None
        if worker is not None:
            worker.cancel()
            await asyncio.wait([worker])
        try:
            await session.close()
        finally:
            self._front.closed(session)
            if self._front.server_state is not None:
                _connections(self._front.server_state).discard(self)
