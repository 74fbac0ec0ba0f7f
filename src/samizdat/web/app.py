"""The HTTP side of ``samizdat ui``: static files, a small JSON API and an event stream.

Routes (all behind :class:`samizdat.web.guard.Guard`):

* ``GET /`` the page; ``GET /static/…`` its script, style and icon (package data, no CDN).
* ``GET /api/state``, ``/api/chat?kind=&name=``, ``/api/safety?name=``, ``/api/devices``,
  ``/api/relays``, ``/api/contacts``, ``/api/connection``: JSON reads.
* ``POST /api/do/ACTION`` with a JSON object: every change (web/service.py ``_ACTIONS``).
  Errors answer 400 ``{"error": "…"}`` with the error's message, which is safe to show.
* ``POST /api/upload?kind=&name=&filename=`` (the file as the body): send a file to a
  contact (``kind=contact``, the default) or a group (``kind=group``);
  ``GET /api/file?id=``: a message's file, decrypted, as a download.
* ``GET /api/events``: Server-Sent Events (new messages, connection changes, SAS codes).
  SSE rather than a WebSocket: one direction is all the page needs, it reconnects by
  itself, and it is plain HTTP, so the same Guard applies to it unchanged.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from samizdat.errors import SamizdatError
from samizdat.web.guard import Guard
from samizdat.web.service import Json, UiService

__all__ = ["build_app", "STATIC"]

STATIC = Path(__file__).parent / "static"
#: Largest JSON body accepted (a message text is far smaller; a link or code fits).
_MAX_BODY = 256 * 1024
#: Seconds between keep-alive comments on an idle event stream.
_PING = 15.0


def _json(
    handler: Callable[[Request], Awaitable[object]],
) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        try:
            return JSONResponse(await handler(request))
        except SamizdatError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    return endpoint


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    path.parent.rmdir()


def build_app(service: UiService, token: str, port: int) -> Guard:
    """The whole ASGI application for one UI process on ``127.0.0.1:port``."""

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", media_type="text/html; charset=utf-8")

    async def state(request: Request) -> object:
        return service.state()

    async def chat(request: Request) -> object:
        q = request.query_params
        return service.conversation(q.get("kind", "contact"), q.get("name", ""))

    async def safety(request: Request) -> object:
        return service.safety(request.query_params.get("name", ""))

    async def devices(request: Request) -> object:
        return service.devices()

    async def relays(request: Request) -> object:
        return service.relays()

    async def contacts(request: Request) -> object:
        return service.contacts()

    async def connection(request: Request) -> object:
        return service.connection()

    async def act(request: Request) -> object:
        raw = await request.body()
        if len(raw) > _MAX_BODY:
            return {"error": "too large"}
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            body = {}
        result: Json = await service.act(request.path_params["action"], body)
        return result

    async def upload(request: Request) -> object:
        q = request.query_params
        return await service.send_file(
            q.get("name", ""),
            q.get("filename", ""),
            request.stream(),
            group=q.get("kind") == "group",
        )

    async def download(request: Request) -> Response:
        try:
            path, name = await service.fetch_file(request.query_params.get("id", ""))
        except SamizdatError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        # Always a download, never shown in our origin: a file is whatever its sender made
        # it (an HTML file must not run as this page). Deleted once sent.
        return FileResponse(
            path,
            media_type="application/octet-stream",
            filename=name,
            content_disposition_type="attachment",
            background=BackgroundTask(_remove, path),
        )

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            with service.hub.subscribe() as queue:
                yield "retry: 1000\n\n"
                while True:
                    try:
                        event = await asyncio.wait_for(queue.get(), _PING)
                    except TimeoutError:
                        yield ": ping\n\n"
                        continue
                    if event is None:
                        return
                    yield f"data: {json.dumps(event)}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/api/state", _json(state)),
            Route("/api/chat", _json(chat)),
            Route("/api/safety", _json(safety)),
            Route("/api/devices", _json(devices)),
            Route("/api/relays", _json(relays)),
            Route("/api/contacts", _json(contacts)),
            Route("/api/connection", _json(connection)),
            Route("/api/do/{action}", _json(act), methods=["POST"]),
            Route("/api/events", events),
            Route("/api/upload", _json(upload), methods=["POST"]),
            Route("/api/file", download),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ]
    )
    return Guard(app, token, port)
