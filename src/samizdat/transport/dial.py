"""Failover: reach a server by the first of many candidates that completes the hello.

A candidate is one endpoint of the descriptor x one transport (WebSocket, long-poll) x
one way to find the address (IP literal, system resolver, DNS-over-HTTPS, or the proxy's
own resolution) x one route (direct or a proxy). Candidates start one after another with
a short stagger, as in Happy Eyeballs (RFC 8305): a failure starts the next at once, a
slow one does not hold the others back. The first to complete the protocol hello wins;
the rest are cancelled. Every attempt keeps a log of its stages, for ``samizdat probe``.

Trust never depends on which candidate wins: TLS is anchored on the descriptor's CA and
the key pin is checked on every path before any HTTP is written (transport/tls.py).
"""

from __future__ import annotations

import asyncio
import functools
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final, TypeVar
from urllib.parse import urlsplit

from samizdat import __version__
from samizdat.errors import ConnectError, ProtocolError, StageFailed
from samizdat.protocol import frames
from samizdat.protocol.descriptor import Descriptor, SignedDescriptor, open_descriptor
from samizdat.protocol.relay import RelayLink
from samizdat.transport.channel import Channel, PollChannel, WsChannel
from samizdat.transport.http import HttpConnection
from samizdat.transport.relay import open_relay, tls_over
from samizdat.transport.resolve import DnsServer, is_ip, resolve_doh, resolve_system
from samizdat.transport.route import DIRECT, Route, open_tcp
from samizdat.transport.tls import Stream, open_tls, server_context

__all__ = [
    "TransportOptions",
    "Candidate",
    "Stage",
    "Attempt",
    "Dialed",
    "candidates",
    "dial",
    "attempt",
    "now_ms",
]

_T = TypeVar("_T")
_MAX_POLL_BODY: Final = 8 * 1024 * 1024


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class TransportOptions:
    """How this client may reach servers (``--proxy``, ``--dns-server``, ``--doh``)."""

    #: When set, every connection goes through this proxy and nothing goes direct.
    proxy: Route | None = None
    dns_server: DnsServer | None = None
    doh: tuple[str, ...] = ()
    #: Trust for DoH services (None: the system's certificate authorities).
    doh_verify: ssl.SSLContext | None = field(default=None, compare=False)
    transports: tuple[str, ...] = ("wss", "poll")
    #: Seconds between the starts of two candidates (RFC 8305 suggests 0.25).
    stagger: float = 0.25
    stage_timeout: float = 4.0
    #: Give up on a whole dial after this many seconds.
    deadline: float = 20.0
    #: Relays the user added (``samizdat relays add``); the descriptor may list more.
    relays: tuple[RelayLink, ...] = field(default=(), repr=False)


@dataclass(frozen=True)
class Candidate:
    url: str
    host: str
    port: int
    path: str
    transport: str
    #: ``literal``, ``system``, ``doh``, ``proxy`` (the proxy resolves the name) or
    #: ``relay`` (the relay knows where the server is).
    resolver: str
    route: Route = DIRECT

    @property
    def key(self) -> str:
        """Stable identity, remembered in the client's store when it works."""
        return f"{self.transport}|{self.url}|{self.resolver}|{self.route.url}"

    @property
    def kind(self) -> str:
        """What kind of path, without naming it: ``wss/system/direct``."""
        return f"{self.transport}/{self.resolver}/{self.route.kind}"

    @property
    def label(self) -> str:
        words = {"wss": "WebSocket", "poll": "HTTPS long-polling"}[self.transport]
        how = {
            "literal": "IP address",
            "system": "system DNS",
            "doh": "DNS-over-HTTPS",
            "proxy": "name resolved by the proxy",
            "relay": "address known to the relay",
        }[self.resolver]
        return f"{words} to {self.host}:{self.port} ({how}, {self.route.label})"


@dataclass
class Stage:
    name: str
    ok: bool
    ms: float
    detail: str = ""


@dataclass
class Attempt:
    candidate: Candidate
    stages: list[Stage] = field(default_factory=list)
    ok: bool = False
    ms: float = 0.0
    address: str = ""
    #: ``stage:kind`` of the failure, or "" (e.g. ``tls:reset``, ``dns:nxdomain``).
    failure: str = ""

    @property
    def why(self) -> str:
        return self.failure or "ok"


@dataclass
class Dialed:
    """The winning candidate: an open channel after a verified ``Welcome``."""

    channel: Channel = field(repr=False)
    welcome: frames.Welcome = field(repr=False)
    #: The verified descriptor the server sent in ``Welcome``.
    descriptor: Descriptor = field(repr=False)
    candidate: Candidate
    attempts: list[Attempt]
    ms: float


def candidates(descriptor: Descriptor, options: TransportOptions) -> list[Candidate]:
    """Every candidate for a descriptor, WebSocket ones first, then long-polling."""
    out: list[Candidate] = []
    for transport in options.transports:
        for endpoint in descriptor.endpoints:
            if endpoint.transport not in ("wss", transport):
                continue
            parts = urlsplit(endpoint.url)
            if parts.hostname is None:
                continue
            host, port = parts.hostname, parts.port or 443
            path = parts.path or "/v1/ws"

            make = functools.partial(Candidate, endpoint.url, host, port, path, transport)

            if options.proxy is not None:
                out.append(make("literal" if is_ip(host) else "proxy", options.proxy))
            elif is_ip(host):
                out.append(make("literal"))
            else:
                out.append(make("system"))
                if options.doh:
                    out.append(make("doh"))
    # Relays come last: a direct route, when one works, costs no one else anything (§11).
    first = descriptor.endpoints[0]
    parts = urlsplit(first.url)
    if parts.hostname is not None:
        for transport in options.transports:
            for link in relays_for(descriptor, options):
                route = Route("relay", f"relay:{link.link_id.hex()}", link, options.proxy)
                out.append(
                    Candidate(first.url, parts.hostname, parts.port or 443,
                              parts.path or "/v1/ws", transport, "relay", route)
                )  # fmt: skip
    return out


def relays_for(descriptor: Descriptor, options: TransportOptions) -> list[RelayLink]:
    """The user's relays and the descriptor's that may serve this server, once each."""
    out: dict[bytes, RelayLink] = {}
    for link in (*options.relays, *descriptor.relays):
        if not link.servers or descriptor.server_key in link.servers:
            out.setdefault(link.link_id + link.secret, link)
    return list(out.values())


class _Resolutions:
    """One lookup per (resolver, host) per dial, shared by the candidates that need it."""

    def __init__(self, options: TransportOptions) -> None:
        self._options = options
        self._tasks: dict[tuple[str, str], asyncio.Task[list[str]]] = {}

    async def get(self, resolver: str, host: str) -> list[str]:
        task = self._tasks.get((resolver, host))
        if task is None:
            task = asyncio.get_running_loop().create_task(self._lookup(resolver, host))
            self._tasks[(resolver, host)] = task
        # Shielded: one candidate giving up must not cancel the lookup for the others.
        return await asyncio.shield(task)

    async def _lookup(self, resolver: str, host: str) -> list[str]:
        o = self._options
        if resolver == "system":
            return await resolve_system(host, o.dns_server, o.stage_timeout)
        failure: StageFailed | None = None
        for url in o.doh:
            try:
                return await resolve_doh(
                    host, url, dns_server=o.dns_server, verify=o.doh_verify,
                    seconds=o.stage_timeout,
                )  # fmt: skip
            except StageFailed as exc:
                failure = exc
        raise failure or StageFailed("doh", "none", "no DoH service configured")

    async def close(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks.values())
        for task in self._tasks.values():
            if not task.cancelled():
                task.exception()  # retrieved: no "never retrieved" warning


async def _timed(attempt: Attempt, name: str, step: Awaitable[_T]) -> _T:
    start = time.monotonic()
    try:
        result = await step
    except StageFailed as exc:
        attempt.stages.append(Stage(exc.stage, False, _ms(start), exc.kind))
        attempt.failure = f"{exc.stage}:{exc.kind}"
        raise
    attempt.stages.append(Stage(name, True, _ms(start)))
    return result


def _ms(start: float) -> float:
    return round((time.monotonic() - start) * 1000, 1)


async def attempt(
    candidate: Candidate,
    descriptor: Descriptor,
    server_key: bytes,
    options: TransportOptions,
    record: Attempt,
    resolutions: _Resolutions | None = None,
    context: ssl.SSLContext | None = None,
) -> tuple[Channel, frames.Welcome, Descriptor]:
    """Run one candidate through DNS, TCP, TLS and pin, the transport, and the hello.

    Every stage is appended to ``record``.

    Raises:
        StageFailed: the stage that failed (also in ``record.failure``).
    """
    start = time.monotonic()
    own = resolutions is None
    resolutions = resolutions or _Resolutions(options)
    context = context or server_context(descriptor)
    t = options.stage_timeout
    c = candidate
    channel: Channel | None = None
    sock: socket.socket | None = None
    stream: Stream | None = None
    try:
        address = c.host
        if c.resolver in ("system", "doh"):
            addresses = await _timed(record, c.resolver, resolutions.get(c.resolver, c.host))
            address = addresses[0]
            record.stages[-1].detail = address
        record.address = address
        sni = None if is_ip(c.host) else c.host

        relay = c.route.relay

        async def connect() -> HttpConnection:
            if relay is not None:
                tunnel = await open_relay(relay, server_key, now_ms(), t, c.route.via or DIRECT)
                stream = await tls_over(tunnel, context, sni, descriptor.tls_pin, t)
            else:
                sock = await open_tcp(c.route, address, c.port, t)
                stream = await open_tls(sock, context, sni, descriptor.tls_pin, t)
            return HttpConnection(stream, _authority(c), _MAX_POLL_BODY)

        if relay is not None:
            tunnel = await _timed(
                record, "relay", open_relay(relay, server_key, now_ms(), t, c.route.via or DIRECT)
            )
            stream = tunnel
            stream = await _timed(
                record, "tls", tls_over(tunnel, context, sni, descriptor.tls_pin, t)
            )
        else:
            sock = await _timed(record, "tcp", open_tcp(c.route, address, c.port, t))
            stream = await _timed(
                record, "tls", open_tls(sock, context, sni, descriptor.tls_pin, t)
            )
        if c.transport == "wss":
            channel = await _timed(
                record, "upgrade", _limit(WsChannel.open(stream, c.host, c.port, c.path), t)
            )
        else:
            up = HttpConnection(stream, _authority(c), _MAX_POLL_BODY)
            channel = await _timed(record, "upgrade", _limit(PollChannel.open(up, connect), t))
        welcome, fresh = await _timed(record, "hello", _limit(_hello(channel, server_key), t + 2))
    except BaseException as exc:
        # Whatever got opened so far is ours to close (cancelled losers included).
        if channel is not None:
            await channel.close()
        elif stream is not None:
            stream[1].transport.abort()
        elif sock is not None:
            sock.close()
        if isinstance(exc, StageFailed):
            record.ms = _ms(start)
        raise
    finally:
        if own:
            await resolutions.close()
    record.ok = True
    record.ms = _ms(start)
    return channel, welcome, fresh


def _authority(c: Candidate) -> str:
    host = f"[{c.host}]" if ":" in c.host else c.host
    return host if c.port == 443 else f"{host}:{c.port}"


async def _limit(step: Awaitable[_T], seconds: float) -> _T:
    try:
        return await asyncio.wait_for(step, seconds)
    except TimeoutError as exc:
        raise StageFailed("hello", "timeout", "no answer in time") from exc


async def _hello(channel: Channel, server_key: bytes) -> tuple[frames.Welcome, Descriptor]:
    hello = frames.Hello(versions=list(frames.PROTOCOL_VERSIONS), client=__version__)
    try:
        await channel.send(frames.encode(hello))
        reply = frames.decode_server_frame(await channel.recv())
    except ConnectError as exc:
        raise StageFailed("hello", "cut", "the connection closed during the hello") from exc
    except ProtocolError as exc:
        raise StageFailed("hello", "bad_frame", "the server answered nonsense") from exc
    if isinstance(reply, frames.Error):
        raise StageFailed("hello", f"refused_{reply.code}", "the server refused the hello")
    if not isinstance(reply, frames.Welcome):
        raise StageFailed("hello", "unexpected", "the server did not answer with welcome")
    try:
        fresh = open_descriptor(reply.descriptor, now_ms(), expected_key=server_key)
    except ProtocolError as exc:
        raise StageFailed("hello", "bad_descriptor", "the server sent a bad descriptor") from exc
    return reply, fresh


async def dial(
    signed: SignedDescriptor,
    server_key: bytes,
    options: TransportOptions,
    preferred: str | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
) -> Dialed:
    """Connect by the first candidate that completes the hello (Happy Eyeballs).

    Args:
        preferred: the key of the candidate that worked last time; it starts first.
        on_attempt: called with each finished attempt (for logs).

    Raises:
        ConnectError: the descriptor does not verify, or no candidate worked; the message
            lists why each failed.
    """
    try:
        descriptor = open_descriptor(signed, now_ms(), expected_key=server_key)
    except ProtocolError as exc:
        raise ConnectError(f"the server descriptor does not verify: {exc.message}") from exc
    context = server_context(descriptor)
    todo = candidates(descriptor, options)
    # Direct and proxied routes before relays whatever worked last (§11); then memory.
    todo.sort(key=lambda c: (c.route.kind == "relay", c.key != preferred))
    if not todo:
        raise ConnectError("the server descriptor lists no usable endpoint")
    resolutions = _Resolutions(options)
    started = time.monotonic()
    attempts: list[Attempt] = []
    running: dict[asyncio.Task[tuple[Channel, frames.Welcome, Descriptor]], Attempt] = {}
    winner: tuple[asyncio.Task[tuple[Channel, frames.Welcome, Descriptor]], Attempt] | None = None
    queue = list(todo)
    try:
        while winner is None:
            if queue:
                c = queue.pop(0)
                record = Attempt(c)
                attempts.append(record)
                task = asyncio.get_running_loop().create_task(
                    attempt(c, descriptor, server_key, options, record, resolutions, context)
                )
                running[task] = record
            if not running:
                break
            left = options.deadline - (time.monotonic() - started)
            if left <= 0:
                break
            done, _ = await asyncio.wait(
                running,
                timeout=min(options.stagger, left) if queue else left,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                record = running.pop(task)
                if task.exception() is None and winner is None:
                    winner = (task, record)
                elif task.exception() is None:
                    await task.result()[0].close()
                else:
                    if not record.failure:
                        record.failure = f"error:{type(task.exception()).__name__}"
                    if on_attempt is not None:
                        on_attempt(record)
    finally:
        for task in running:
            task.cancel()
        if running:
            await asyncio.wait(running)
        for task, record in running.items():
            if not task.cancelled() and task.exception() is None:
                await task.result()[0].close()
            elif not record.failure:
                record.failure = "cancelled"
        await resolutions.close()
    if winner is None:
        # No host or address in the message: errors get logged (probe shows them instead).
        why = "; ".join(f"{a.candidate.kind}: {a.why}" for a in attempts if a.failure)
        raise ConnectError("cannot reach the server: " + (why or "timed out"))
    task, record = winner
    channel, welcome, fresh = task.result()
    if on_attempt is not None:
        on_attempt(record)
    return Dialed(channel, welcome, fresh, record.candidate, attempts, _ms(started))
