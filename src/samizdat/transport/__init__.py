"""How a client reaches a server that may be blocked (DESIGN §6, docs/censorship.md).

Resolvers (system, ``--dns-server``, DNS-over-HTTPS), routes (direct, SOCKS5, HTTP
CONNECT), transports (WebSocket and HTTPS long-polling over pinned TLS), failover
(:func:`dial`) and diagnosis (:func:`probe`). Knows nothing of identities or messages.
"""

from samizdat.transport.channel import Channel, PollChannel, WsChannel
from samizdat.transport.dial import (
    Attempt,
    Candidate,
    Dialed,
    Stage,
    TransportOptions,
    attempt,
    candidates,
    dial,
)
from samizdat.transport.resolve import DEFAULT_DOH, DnsServer, parse_dns_server
from samizdat.transport.route import DIRECT, Route, parse_proxy, proxy_from_env
from samizdat.transport.tls import pin_of

__all__ = [
    "Attempt",
    "Candidate",
    "Channel",
    "DEFAULT_DOH",
    "DIRECT",
    "Dialed",
    "DnsServer",
    "PollChannel",
    "Route",
    "Stage",
    "TransportOptions",
    "WsChannel",
    "attempt",
    "candidates",
    "dial",
    "parse_dns_server",
    "parse_proxy",
    "pin_of",
    "proxy_from_env",
]
