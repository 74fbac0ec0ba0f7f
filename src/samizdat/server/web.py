"""The HTTP endpoints, served by uvicorn and Starlette.

``GET /`` answers a small plain page (so a prober sees an ordinary HTTPS site),
``GET /v1/health`` answers ``{"status": "ok"}`` and ``/v1/poll/*`` carries frames by HTTPS
long-polling (server/poll.py). ``/v1/ws`` never gets here: the front (server/front.py)
hands WebSocket upgrades to picows; a WebSocket to any other path is refused here.
"""

from __future__ import annotations

import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp

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

    return starlette
