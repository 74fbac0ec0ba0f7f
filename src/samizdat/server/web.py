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
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from samizdat.protocol import frames as f
from samizdat.server.poll import PollSessions, poll_routes
from samizdat.server.session import Session, SessionDeps

__all__ = ["ConnectionStats", "build_app"]

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


async def _write_loop(websocket: WebSocket, session: Session) -> None:
    while (frame := await session.next_frame()) is not None:
        await websocket.send_bytes(f.encode(frame))
    await websocket.close(code=1000)


async def _read_loop(websocket: WebSocket, session: Session) -> None:
    while not session.closing:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        data = message.get("bytes")
        if data is not None:
            await session.receive_bytes(data)
        else:
            await session.receive_text()


async def _serve_connection(
    websocket: WebSocket, deps: SessionDeps, stats: ConnectionStats
) -> None:
    await websocket.accept()
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
                if not isinstance(exc, (WebSocketDisconnect, OSError, RuntimeError)):
                    _log.error("connection failed: %s", type(exc).__name__)
        await session.close()
        stats.closed(session)
        if websocket.application_state is not WebSocketState.DISCONNECTED:
            try:
                await websocket.close(code=1000)
            except (RuntimeError, OSError):
                pass


def build_app(
    deps: SessionDeps, stats: ConnectionStats, polls: PollSessions | None = None
) -> Starlette:
    """The ASGI application of one server node (with long-polling when ``polls`` is given)."""

    async def index(request: Request) -> PlainTextResponse:
        return PlainTextResponse(INDEX_TEXT)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def websocket_endpoint(websocket: WebSocket) -> None:
        await _serve_connection(websocket, deps, stats)

    return Starlette(
        routes=[
            Route("/", index),
            Route("/v1/health", health),
            WebSocketRoute("/v1/ws", websocket_endpoint),
            *(poll_routes(polls) if polls is not None else []),
        ]
    )
