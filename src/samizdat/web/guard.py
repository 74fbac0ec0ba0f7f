"""Who may talk to the local UI: the access token, the Host check and the security headers.

``samizdat ui`` listens on 127.0.0.1 only, but any web page the user opens, and any other
local user or program, can send requests to 127.0.0.1 (docs/security.md, "The local UI").
So every request must pass, in this order:

1. **Host**: exactly ``127.0.0.1:PORT`` or ``localhost:PORT``. A page on ``evil.example``
   whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends ``Host: evil.example``.
2. **Token**: the random token printed in the URL. The first request carries it as
   ``?token=``; the answer sets it as an ``HttpOnly``, ``SameSite=Strict`` cookie and
   redirects to ``/``, so the token does not stay in the address bar, history or
   ``Referer``. Later requests carry the cookie (or an ``X-Samizdat-Token`` header).
3. **Writes** (POST) also need the ``X-Samizdat-Request`` header, which a cross-site form
   cannot send and a cross-site ``fetch`` cannot send without a CORS preflight we never
   grant, and an ``Origin``, when present, of this very server.

Every answer carries a strict Content-Security-Policy (no inline script, everything from
'self'), ``nosniff``, no referrer, no framing and no caching.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

__all__ = ["Guard", "CSP", "cookie_name", "WRITE_HEADER"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

#: QR codes are SVG data: URIs made on the server (segno); nothing else is allowed.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
WRITE_HEADER = "x-samizdat-request"
_TOKEN_HEADER = "x-samizdat-token"
_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]


def cookie_name(port: int) -> str:
    """Cookies are not kept apart by port: two UIs on one computer need two names."""
    return f"samizdat-ui-{port}"


class Guard:
    """ASGI middleware applying the three checks above to HTTP requests."""

    def __init__(self, app: App, token: str, port: int) -> None:
        self._app = app
        self._token = token
        self._port = port
        self._hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}
        self._origins = {f"http://{h}" for h in self._hosts}
        self._cookie = cookie_name(port)

    def _valid(self, candidate: str | None) -> bool:
        return candidate is not None and hmac.compare_digest(
            candidate.encode(), self._token.encode()
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await self._app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if headers.get("host") not in self._hosts:
            await _plain(send, 403, "refused: unknown Host (samizdat ui answers 127.0.0.1 only)")
            return
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        if "token" in query:
            if scope["path"] == "/" and self._valid(query["token"][0]):
                cookie = (
                    f"{self._cookie}={self._token}; HttpOnly; SameSite=Strict; Path=/"
                ).encode()
                await _plain(send, 303, "", [(b"location", b"/"), (b"set-cookie", cookie)])
                return
            await _plain(send, 403, "refused: wrong token")
            return
        jar: SimpleCookie = SimpleCookie()
        jar.load(headers.get("cookie", ""))
        sent = jar[self._cookie].value if self._cookie in jar else headers.get(_TOKEN_HEADER)
        if not self._valid(sent):
            await _plain(send, 403, "refused: open the address `samizdat ui` printed")
            return
        if scope["method"] not in ("GET", "HEAD"):
            origin = headers.get("origin")
            if headers.get(WRITE_HEADER) != "1" or (
                origin is not None and origin not in self._origins
            ):
                await _plain(send, 403, "refused: not a request of this page")
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_HEADERS]
            await send(message)

        await self._app(scope, receive, send_with_headers)


async def _plain(
    send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = text.encode()
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
        *_HEADERS,
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
