"""The HTTP and WebSocket endpoints: a thin driver around :class:`Session`.

``GET /`` answers a small plain page (so a prober sees an ordinary HTTPS site),
``GET /v1/health`` answers ``{"status": "ok"}``, ``/v1/ws`` carries frames, and
``/v1/poll/*`` carries the same frames by HTTPS long-polling (server/poll.py).
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from samizdat.protocol import frames as f
from samizdat.server.poll import PollSessions, poll_routes
from samizdat.server.session import Session, SessionDeps

__all__ = ["ConnectionStats", "build_app"]

#: The path of the WebSocket endpoint (protocol.md §2).
WS_PATH = "/v1/ws"

_log = logging.getLogger(__name__)

INDEX_TEXT = "samizdat server\n"


class ConnectionStats:
    """Open connections, for the periodic INFO line; ``sessions`` for descriptor pushes."""

    def __init__(self) -> None:
        self.open = 0
        self.total = 0
        self.sessions: set[Session] = set()

    def opened(self, session: Session) -> None:
        self.open += 1
        self.total += 1
        self.sessions.add(session)

    def closed(self, session: Session) -> None:
        self.open -= 1
        self.sessions.discard(session)

    def __repr__(self) -> str:
        return f"ConnectionStats(open={self.open}, total={self.total})"


class _Socket:
    """The ASGI WebSocket messages the driver needs, spoken directly.

    Starlette's ``WebSocket`` adds a state check and an exception-handling wrapper to every
    message and a few objects to every connection; this endpoint needs neither (profiled
    in performance.md), so ``build_app`` routes it around Starlette.
    """

    __slots__ = ("_receive", "_send", "closed")

    def __init__(self, receive: Receive, send: Send) -> None:
        self._receive = receive
        self._send = send
        self.closed = False

    async def accept(self) -> bool:
        if (await self._receive())["type"] != "websocket.connect":
            self.closed = True
            return False
        await self._send({"type": "websocket.accept"})
        return True

    async def receive(self) -> Message:
        message = await self._receive()
        if message["type"] == "websocket.disconnect":
            self.closed = True
        return message

    async def send_bytes(self, data: bytes) -> None:
        await self._send({"type": "websocket.send", "bytes": data})

    async def close(self, code: int = 1000) -> None:
        if not self.closed:
            self.closed = True
            await self._send({"type": "websocket.close", "code": code, "reason": ""})


async def _write_loop(websocket: _Socket, session: Session) -> None:
    while (frame := await session.next_frame()) is not None:
        await websocket.send_bytes(f.encode(frame))
    await websocket.close(code=1000)


async def _read_loop(websocket: _Socket, session: Session) -> None:
    while not session.closing:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is not None:
            await session.receive_bytes(data)
        else:
            await session.receive_text()


async def _serve_connection(websocket: _Socket, deps: SessionDeps, stats: ConnectionStats) -> None:
    if not await websocket.accept():
        return
    session = Session(deps)
    stats.opened(session)
    reader = asyncio.create_task(_read_loop(websocket, session))
    writer = asyncio.create_task(_write_loop(websocket, session))
    try:
        done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader in done and session.closing and not writer.done():
            # The session decided to close: let the writer flush its last frames.
            await asyncio.wait({writer}, timeout=5)
    finally:
        for task in (reader, writer):
            task.cancel()
        await asyncio.wait({reader, writer})
        for task in (reader, writer):
            if not task.cancelled() and (exc := task.exception()) is not None:
                if not isinstance(exc, (OSError, RuntimeError)):
                    _log.error("connection failed: %s", type(exc).__name__)
        await session.close()
        stats.closed(session)
        try:
            await websocket.close(code=1000)
        except (RuntimeError, OSError):
            pass  # the peer is gone already (a reset connection)


def build_app(
    deps: SessionDeps, stats: ConnectionStats, polls: PollSessions | None = None
) -> ASGIApp:
    """The ASGI application of one server node (with long-polling when ``polls`` is given)."""

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse(INDEX_TEXT)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    starlette: ASGIApp = Starlette(
        routes=[
            Route("/", index),
            Route("/v1/health", health),
            *(poll_routes(polls) if polls is not None else []),
        ]
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and scope["path"] == WS_PATH:
            await _serve_connection(_Socket(receive, send), deps, stats)
        else:  # HTTP, and WebSockets to other paths (which Starlette refuses)
            await starlette(scope, receive, send)

    return app
