"""How this client reaches its server, in words a person can act on (for ``samizdat ui``).

The browser UI (``samizdat.web``) talks only to ``client/`` (DESIGN §2), so the route in
use, the ``probe`` findings (transport/probe.py) and the proxy setting reach it through
here, as plain frozen dataclasses: no transport object crosses into ``web/``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from samizdat.crypto.safety import format_safety_number
from samizdat.crypto.sas import SasCode
from samizdat.errors import ConnectError
from samizdat.transport import TransportOptions, parse_proxy
from samizdat.transport.probe import probe

if TYPE_CHECKING:
    from samizdat.client.app import Client
    from samizdat.client.connection import Connection

__all__ = [
    "RouteInfo",
    "Findings",
    "route_info",
    "findings",
    "set_proxy",
    "proxy_label",
    "reconnect",
    # Re-exported for web/, which imports nothing below client/ (pyproject import contract).
    "TransportOptions",
    "SasCode",
    "format_safety_number",
]

_TRANSPORTS = {"wss": "WebSocket", "poll": "HTTPS long-polling"}
_RESOLVERS = {
    "literal": "the IP address in the server's link",
    "system": "this computer's DNS",
    "doh": "DNS-over-HTTPS",
    "proxy": "the proxy",
    "relay": "the relay",
}
#: What the user can do about each block ``probe`` names (transport/probe.py).
_ADVICE = {
    "dns_nxdomain": "Your network hides the server's name (DNS). Add a relay link from someone "
    "outside the block, or set a proxy (Tor, a VPN).",
    "dns_poisoned": "Your network gives a false address for the server's name (DNS). Add a "
    "relay link, or set a proxy.",
    "doh_blocked": "Encrypted DNS (DNS-over-HTTPS) is blocked too.",
    "blackhole": "The server's address does not answer from your network. Add a relay link, "
    "or set a proxy.",
    "sni_reset": "Connections naming the server are cut. samizdat tries its IP address; a "
    "relay link or a proxy also helps.",
    "tls_interception": "Someone on your network answers in the server's place. Do not "
    "trust this network; add a relay link or set a proxy.",
    "websocket_blocked": "WebSockets are blocked; samizdat uses HTTPS long-polling instead.",
    "direct_blocked": "Only routes through a relay or proxy work.",
}
_GENERIC = "Add a relay link from someone outside the block, or set a proxy (Tor, a VPN)."


@dataclass(frozen=True)
class RouteInfo:
    """The path a live connection took, in words."""

    transport: str
    endpoint: str
    resolver: str
    route: str
    #: One sentence: "Connected over WebSocket to … directly."
    sentence: str


@dataclass(frozen=True)
class Findings:
    """What ``probe`` found, for a person: one sentence, what to do, and the details."""

    ok: bool
    blocks: list[str]
    sentence: str
    advice: list[str]
    #: One line per path tried: "WebSocket to chat.example (system DNS, direct): dns nxdomain".
    details: list[str]


def route_info(conn: Connection) -> RouteInfo:
    c = conn.candidate
    if c is None:
        return RouteInfo("", "", "", "", "Connected.")
    how = _TRANSPORTS.get(c.transport, c.transport)
    via = "directly" if c.route.kind == "direct" else f"through the {c.route.label}"
    resolver = _RESOLVERS.get(c.resolver, c.resolver)
    sentence = f"Connected over {how} to {c.host}:{c.port} {via} (address from {resolver})."
    return RouteInfo(how, f"{c.host}:{c.port}", resolver, c.route.label, sentence)


async def findings(client: Client, seconds: float = 20.0) -> Findings:
    """Probe every path to our own server and explain the result.

    Raises:
        ConnectError: the probe did not finish in ``seconds`` or the descriptor is bad.
    """
    signed, key = client.own_descriptor()
    try:
        report = await asyncio.wait_for(probe(signed, key, client.transport), seconds)
    except TimeoutError as exc:
        raise ConnectError("the connection test did not finish in time") from exc
    advice = [_ADVICE[b] for b in report.blocks if b in _ADVICE]
    if not report.ok and not advice:
        advice.append(_GENERIC)
    # probe's sentence ends with command-line flags to try; the UI offers them as forms.
    sentence = report.sentence.split(". try --", 1)[0].rstrip(".") + "."
    details = []
    for a in report.attempts:
        c = a.candidate
        how = _TRANSPORTS.get(c.transport, c.transport)
        what = "works" if a.ok else (a.failure or "failed").replace(":", " ")
        details.append(f"{how} to {c.host}:{c.port} ({c.resolver}, {c.route.label}): {what}")
    return Findings(report.ok, list(report.blocks), sentence, advice, details)


def set_proxy(client: Client, url: str) -> str:
    """Send everything through the proxy at ``url`` from the next connection on ("" clears).

    Returns the proxy's label (no credentials). Raises LocalError for a malformed URL.
    """
    route = parse_proxy(url) if url.strip() else None
    client.transport = replace(client.transport, proxy=route)
    return route.label if route is not None else ""


async def reconnect(client: Client) -> None:
    """Close every open connection so the next call dials again (new relays, a new proxy)."""
    for server_key in list(client._conns):
        await client._drop(server_key)


def proxy_label(client: Client) -> str:
    proxy = client.transport.proxy
    return proxy.label if proxy is not None else ""
