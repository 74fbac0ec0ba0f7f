"""The HTTP and WebSocket endpoints: a thin driver around :class:`Session`.

``GET /`` answers a small plain page (so a prober sees an ordinary HTTPS site),
``GET /v1/health`` answers ``{"status": "ok"}``, and ``/v1/ws`` carries frames.
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
from samizdat.server.session import Session, SessionDeps

__all__ = ["ConnectionStats", "build_app"]

_log = logging.getLogger(__name__)

INDEX_TEXT = "samizdat server\n"


class ConnectionStats:
    """Open WebSocket connections, for the periodic INFO line."""

    def __init__(self) -> None:
        self.open = 0
        self.total = 0

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
    stats.open += 1
    stats.total += 1
    session = Session(deps)
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
        stats.open -= 1
        if websocket.application_state is not WebSocketState.DISCONNECTED:
            try:
                await websocket.close(code=1000)
            except (RuntimeError, OSError):
                pass


def build_app(deps: SessionDeps, stats: ConnectionStats) -> Starlette:
    """The ASGI application of one server node."""

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
        ]
    )
