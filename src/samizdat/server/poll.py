"""HTTPS long-polling: the same :class:`Session` for networks that break WebSockets (§5.5).

``POST /v1/poll/open`` creates a session and answers its id (64 hex digits, random);
``POST /v1/poll/send`` (header ``x-samizdat-session``) feeds one client frame;
``POST /v1/poll/recv`` answers the session's next frames as a msgpack array of binary
strings, waiting up to ``POLL_WAIT`` seconds for the first; ``POST /v1/poll/close`` ends
it. A session nobody polled for ``IDLE_TIMEOUT`` seconds is closed, like a dropped
WebSocket. The delivery contract is the Session's: frames lost with an HTTP answer are
entries not yet acknowledged, so they come again on the next subscription.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from samizdat.protocol import frames as f
from samizdat.protocol import limits
from samizdat.server.session import Session, SessionDeps

__all__ = ["PollSessions", "poll_routes", "POLL_WAIT", "IDLE_TIMEOUT"]

POLL_WAIT: Final = 20.0
IDLE_TIMEOUT: Final = 60.0
MAX_POLL_SESSIONS: Final = 10_000
#: Frames per ``/recv`` answer, so one answer stays a bounded size.
_MAX_BATCH: Final = 16
_SESSION_HEADER: Final = "x-samizdat-session"
_encoder = msgspec.msgpack.Encoder()


@dataclass
class _Polled:
    session: Session
    last_seen: float
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Set when the session ends or the server stops: a waiting ``recv`` answers at once.
    gone: asyncio.Event = field(default_factory=asyncio.Event)


class PollSessions:
    """Live long-poll sessions by id. Never shows an id."""

    def __init__(
        self,
        deps: SessionDeps,
        on_open: Callable[[Session], None],
        on_close: Callable[[Session], None],
    ) -> None:
        self._deps = deps
        self._on_open = on_open
        self._on_close = on_close
        self._by_id: dict[str, _Polled] = {}

    def __repr__(self) -> str:
        return f"PollSessions(open={len(self._by_id)})"

    def __len__(self) -> int:
        return len(self._by_id)

    async def _sweep(self) -> None:
        now = time.monotonic()
        for sid, polled in list(self._by_id.items()):
            if now - polled.last_seen > IDLE_TIMEOUT and not polled.lock.locked():
                await self._drop(sid)

    async def _drop(self, sid: str) -> None:
        polled = self._by_id.pop(sid, None)
        if polled is not None:
            polled.gone.set()
            await polled.session.close()
            self._on_close(polled.session)

    def wake_all(self) -> None:
        """The server is stopping: answer every waiting ``recv`` now (closed)."""
        for polled in self._by_id.values():
            polled.gone.set()

    async def close_all(self) -> None:
        for sid in list(self._by_id):
            await self._drop(sid)

    def _get(self, request: Request) -> _Polled | None:
        polled = self._by_id.get(request.headers.get(_SESSION_HEADER, ""))
        if polled is not None:
            polled.last_seen = time.monotonic()
        return polled

    async def open(self, request: Request) -> Response:
        await self._sweep()
        if len(self._by_id) >= MAX_POLL_SESSIONS:
            return PlainTextResponse("busy\n", status_code=503)
        sid = secrets.token_hex(32)
        session = Session(self._deps)
        self._by_id[sid] = _Polled(session, time.monotonic())
        self._on_open(session)
        return PlainTextResponse(sid)

    async def send(self, request: Request) -> Response:
        polled = self._get(request)
        if polled is None:
            return Response(status_code=404)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > limits.MAX_FRAME + 1024:
                return Response(status_code=413)
        await polled.session.receive_bytes(body)
        return Response(status_code=204)

    async def recv(self, request: Request) -> Response:
        polled = self._get(request)
        if polled is None:
            return Response(status_code=404)
        sid = request.headers[_SESSION_HEADER]
        batch: list[f.ServerFrame] = []
        closed = False
        async with polled.lock:
            getter = asyncio.ensure_future(polled.session.next_frame())
            gone = asyncio.ensure_future(polled.gone.wait())
            await asyncio.wait({getter, gone}, timeout=POLL_WAIT, return_when="FIRST_COMPLETED")
            for task in (getter, gone):
                task.cancel()
            await asyncio.wait({getter, gone})
            if not getter.cancelled():  # a frame taken is a frame answered, never dropped
                first = getter.result()
                if first is None:
                    closed = True
                else:
                    more, closed = polled.session.drain_frames(_MAX_BATCH - 1)
                    batch = [first, *more]
            closed = closed or polled.gone.is_set()
            polled.last_seen = time.monotonic()
        headers = {"cache-control": "no-store"}
        if closed:
            headers["x-samizdat-closed"] = "1"
            await self._drop(sid)
        return Response(
            _encoder.encode([f.encode(frame) for frame in batch]),
            headers=headers,
            media_type="application/octet-stream",
        )

    async def close(self, request: Request) -> Response:
        polled = self._get(request)
        if polled is not None:
            await self._drop(request.headers[_SESSION_HEADER])
        return Response(status_code=204)


def poll_routes(sessions: PollSessions) -> list[Route]:
    return [
        Route("/v1/poll/open", sessions.open, methods=["POST"]),
        Route("/v1/poll/send", sessions.send, methods=["POST"]),
        Route("/v1/poll/recv", sessions.recv, methods=["POST"]),
        Route("/v1/poll/close", sessions.close, methods=["POST"]),
    ]
