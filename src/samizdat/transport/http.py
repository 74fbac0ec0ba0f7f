"""A minimal HTTP/1.1 client (h11) over a stream we opened ourselves.

Our own stream, because we choose the route, the address, the SNI and the pin before a
byte of HTTP is written; httpx would make those choices for us. Used by long-polling
(protocol §5.5) and DNS-over-HTTPS (RFC 8484). One request at a time, keep-alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

import h11

from samizdat.errors import StageFailed
from samizdat.transport.tls import Stream

__all__ = ["HttpResponse", "HttpConnection"]

_READ = 65536


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str]
    body: bytes = field(repr=False)


class HttpConnection:
    """HTTP/1.1 requests, one after another, on one stream."""

    def __init__(self, stream: Stream, host: str, max_body: int) -> None:
        self._reader, self._writer = stream
        self._host = host
        self._max_body = max_body
        self._h11 = h11.Connection(h11.CLIENT)
        self._lock = asyncio.Lock()
        #: Responses read whole on this connection: after one, it is a reused keep-alive
        #: connection that the server may close while our next request is on the way.
        self._answered = 0
        self._got_bytes = False

    def __repr__(self) -> str:
        return "HttpConnection(...)"

    async def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        headers: list[tuple[str, str]] | None = None,
        seconds: float = 30.0,
    ) -> HttpResponse:
        """Send one request and read its whole response.

        Raises:
            StageFailed: stage ``http``: the connection broke, timed out or spoke nonsense;
                kind ``stale`` when a reused keep-alive connection closed before any byte
                of the answer (RFC 9112 §9.3.1.1: the request was not acted on, and may be
                sent again on a new connection).
        """
        async with self._lock:
            self._got_bytes = False
            try:
                return await asyncio.wait_for(
                    self._exchange(method, target, body, headers), seconds
                )
            except TimeoutError as exc:
                self.abort()
                raise StageFailed("http", "timeout", "no HTTP answer in time") from exc
            except (OSError, h11.ProtocolError, EOFError) as exc:
                self.abort()
                if self._answered and not self._got_bytes:
                    kind = "stale"
                elif isinstance(exc, ConnectionResetError):
                    kind = "reset"
                else:
                    kind = "broken"
                raise StageFailed("http", kind, "the HTTP connection broke") from exc

    async def _exchange(
        self, method: str, target: str, body: bytes, headers: list[tuple[str, str]] | None
    ) -> HttpResponse:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        request = h11.Request(
            method=method,
            target=target,
            headers=[
                ("host", self._host),
                ("content-length", str(len(body))),
                ("user-agent", "Mozilla/5.0"),
                *(headers or []),
            ],
        )
        out = self._h11.send(request) or b""
        if body:
            out += self._h11.send(h11.Data(data=body)) or b""
        out += self._h11.send(h11.EndOfMessage()) or b""
        self._writer.write(out)
        await self._writer.drain()
        status = 0
        response_headers: dict[str, str] = {}
        chunks: list[bytes] = []
        size = 0
        while True:
            event = self._h11.next_event()
            if event is h11.NEED_DATA:
                data = await self._reader.read(_READ)
                if not data:
                    raise EOFError("connection closed")
                self._got_bytes = True
                self._h11.receive_data(data)
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                response_headers = {k.decode().lower(): v.decode() for k, v in event.headers}
            elif isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._max_body:
                    raise h11.ProtocolError("response body too large")
                chunks.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._answered += 1
                return HttpResponse(status, response_headers, b"".join(chunks))
            elif isinstance(event, h11.ConnectionClosed):
                raise EOFError("connection closed")

    @property
    def reusable(self) -> bool:
        """False once the peer closed the connection (e.g. a server's keep-alive timeout)."""
        return not self._reader.at_eof() and not self._writer.is_closing()

    def abort(self) -> None:
        self._writer.transport.abort()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await self._writer.wait_closed()
