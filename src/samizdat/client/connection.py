"""One connection to one server, from its verified descriptor (DESIGN §4, §6, protocol §5).

:meth:`Connection.open` goes through ``samizdat.transport``: every endpoint of the
descriptor, over WebSocket or HTTPS long-polling, directly or through a proxy, with the
system resolver or DNS-over-HTTPS, tried as in Happy Eyeballs. Whatever path wins, TLS
is anchored on the descriptor's CA and the key pin is checked before any HTTP is sent,
and the server's ``Welcome`` must carry a descriptor signed by the key we already trust.

After the hello, requests are matched to replies by ``rid`` with futures; ``Deliver``
frames go to a queue that :meth:`Connection.next_delivery` drains; a newer signed
descriptor (``DescriptorUpdate``) replaces ours and is handed to ``on_descriptor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TypeVar

import msgspec

from samizdat.errors import ConnectError, ErrorCode, ProtocolError, ServerRefused
from samizdat.protocol import frames
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor
from samizdat.transport import Attempt, Candidate, Channel, TransportOptions, dial, pin_of
from samizdat.transport.dial import now_ms

__all__ = ["REQUEST_TIMEOUT", "Connection", "now_ms", "pin_of"]

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 30.0
_F = TypeVar("_F")


class Connection:
    """A live, hello'd connection. Use :meth:`open`; never shows what it carries."""

    def __init__(
        self,
        channel: Channel,
        welcome: frames.Welcome,
        descriptor: Descriptor,
        candidate: Candidate | None = None,
        attempts: list[Attempt] | None = None,
    ):
        self._channel = channel
        self.welcome = welcome
        self.descriptor = descriptor
        self.signed_descriptor: SignedDescriptor = welcome.descriptor
        #: The path that won (endpoint, transport, resolver, route) and why others lost.
        self.candidate = candidate
        self.attempts = attempts or []
        #: Called with every newer verified descriptor the server pushes.
        self.on_descriptor: Callable[[SignedDescriptor], object] | None = None
        # Login and subscription belong to this connection: a new one starts without them.
        self.logged_in = False
        self.subscribed = False
        #: Entries delivered on this subscription that ``listen`` has not consumed yet.
        self.backlog: list[frames.Entry] = []
        self._next_rid = 1
        self._pending: dict[int, asyncio.Future[frames.ServerFrame]] = {}
        self._deliveries: asyncio.Queue[frames.Deliver | None] = asyncio.Queue()
        self._closed_reason: str | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    @classmethod
    async def open(
        cls,
        signed: SignedDescriptor,
        server_key: bytes,
        options: TransportOptions | None = None,
        preferred: str | None = None,
    ) -> Connection:
        """Connect by the first candidate path that completes TLS, the pin and hello.

        Raises:
            ConnectError: no path worked (the message says why each failed, no secrets).
        """
        dialed = await dial(signed, server_key, options or TransportOptions(), preferred)
        # Addresses only at DEBUG (STYLE §7); `samizdat probe`/`status` show them to the user.
        for attempt in dialed.attempts:
            if attempt.failure:
                log.debug("candidate failed: %s: %s", attempt.candidate.label, attempt.failure)
        log.debug("connected: %s", dialed.candidate.label)
        return cls(
            dialed.channel, dialed.welcome, dialed.descriptor, dialed.candidate, dialed.attempts
        )

    @property
    def closed(self) -> bool:
        return self._closed_reason is not None

    async def call(self, frame: frames.ClientFrame, expect: type[_F]) -> _F:
        """Send a request and wait for its reply, which must be of type ``expect``.

        Raises:
            ProtocolError: the reply had an unexpected type.
            (and everything :meth:`call_any` raises)
        """
        reply = await self.call_any(frame)
        if not isinstance(reply, expect):
            raise ProtocolError(
                ErrorCode.BAD_FRAME, f"expected {expect.__name__}, got {type(reply).__name__}"
            )
        return reply

    async def call_any(self, frame: frames.ClientFrame) -> frames.ServerFrame:
        """Send a request (its ``rid`` is replaced) and wait for its reply.

        Raises:
            ServerRefused: the server answered ``Error``.
            ConnectError: the connection closed or the server did not answer in time.
        """
        if self._closed_reason is not None:
            raise ConnectError(f"connection closed: {self._closed_reason}")
        rid = self._next_rid
        self._next_rid = (self._next_rid + 1) % 2**31
        # msgspec structs are frozen: rebuild with our rid.
        frame = msgspec.structs.replace(frame, rid=rid)
        future: asyncio.Future[frames.ServerFrame] = asyncio.get_running_loop().create_future()
        self._pending[rid] = future
        try:
            await self._channel.send(frames.encode(frame))
            reply = await asyncio.wait_for(future, REQUEST_TIMEOUT)
        except TimeoutError as exc:
            raise ConnectError("the server did not answer in time") from exc
        finally:
            self._pending.pop(rid, None)
            # The connection can close while the send is under way: the read loop then fails
            # the future and the send raises. Mark that error seen; the send's is raised.
            if future.done() and not future.cancelled():
                future.exception()
            else:
                future.cancel()
        if isinstance(reply, frames.Error):
            raise ServerRefused(reply.code, reply.message)
        return reply

    async def next_delivery(self, idle: float | None) -> frames.Deliver | None:
        """The next ``Deliver`` frame, or None after ``idle`` seconds without one.

        Raises:
            ConnectError: the connection closed.
        """
        if self._closed_reason is not None and self._deliveries.empty():
            raise ConnectError(f"connection closed: {self._closed_reason}")
        try:
            item = await asyncio.wait_for(self._deliveries.get(), idle)
        except TimeoutError:
            return None
        if item is None:
            raise ConnectError(f"connection closed: {self._closed_reason}")
        return item

    async def _read_loop(self) -> None:
        reason = "closed"
        try:
            while True:
                frame = frames.decode_server_frame(await self._channel.recv())
                rid = getattr(frame, "rid", None)
                if isinstance(frame, frames.Deliver):
                    self._deliveries.put_nowait(frame)
                elif isinstance(frame, frames.DescriptorUpdate):
                    self._update_descriptor(frame.descriptor)
                elif rid is not None and rid in self._pending:
                    self._pending.pop(rid).set_result(frame)
                elif isinstance(frame, frames.Error):
                    reason = f"server: {frame.code}"
                    break
        except ProtocolError as exc:
            reason = f"bad frame from server: {exc.code.value}"
        except ConnectError as exc:
            reason = str(exc)
        finally:
            self._closed_reason = reason
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectError(f"connection closed: {reason}"))
            self._pending.clear()
            self._deliveries.put_nowait(None)
            with contextlib.suppress(Exception):
                await self._channel.close()

    def _update_descriptor(self, signed: SignedDescriptor) -> None:
        try:
            fresh = open_descriptor(signed, now_ms(), expected_key=self.descriptor.server_key)
        except ProtocolError:
            log.info("ignored a descriptor update that does not verify")
            return
        if fresh.seq > self.descriptor.seq:
            self.descriptor = fresh
            self.signed_descriptor = signed
            if self.on_descriptor is not None:
                self.on_descriptor(signed)

    async def close(self) -> None:
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._reader
        with contextlib.suppress(Exception):
            await self._channel.close()

    def __repr__(self) -> str:
        return f"Connection(closed={self.closed})"
