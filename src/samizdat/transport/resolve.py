"""Name resolution: the system resolver (or one the user names), then DNS-over-HTTPS.

Censors delete names from national resolvers (NXDOMAIN) or answer with a wrong address;
DNS-over-HTTPS (RFC 8484) asks a resolver abroad inside TLS, where they can only block
the whole DoH service. IP literals in the descriptor need no resolution at all.

``--dns-server HOST:PORT`` replaces the system resolver by plain DNS to that server
(dnspython); without it we use the operating system's ``getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import dns.asyncresolver
import dns.exception
import dns.message
import dns.rcode
import dns.rdatatype
import dns.resolver

from samizdat.errors import StageFailed
from samizdat.transport.http import HttpConnection
from samizdat.transport.route import DIRECT, Route, open_tcp
from samizdat.transport.tls import open_tls

__all__ = [
    "DEFAULT_DOH",
    "DnsServer",
    "is_ip",
    "parse_dns_server",
    "resolve_system",
    "resolve_doh",
]

#: Used only when the user gives no ``--doh`` (docs/censorship.md): IP-literal URLs, so
#: the DoH service itself needs no DNS. Tests always pass their own.
DEFAULT_DOH: tuple[str, ...] = (
    "https://1.1.1.1/dns-query",
    "https://9.9.9.9/dns-query",
    "https://8.8.8.8/dns-query",
)

_DOH_MAX_ANSWER = 65535


@dataclass(frozen=True)
class DnsServer:
    host: str
    port: int


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def parse_dns_server(text: str) -> DnsServer:
    """``"127.0.0.1:5353"`` (or a bare address: port 53) -> :class:`DnsServer`.

    Raises:
        ValueError: not an IP address with an optional port.
    """
    host, sep, port = text.strip().rpartition(":")
    if not sep or "]" in port or (host.count(":") and not host.startswith("[")):
        host, port = text.strip(), "53"
    host = host.strip("[]")
    if not is_ip(host) or not port.isdigit():
        raise ValueError("a DNS server must be IP:PORT")
    return DnsServer(host, int(port))


async def resolve_system(host: str, server: DnsServer | None, seconds: float) -> list[str]:
    """Addresses of ``host`` from the system resolver, or from ``server`` if given.

    Raises:
        StageFailed: stage ``dns``, kind ``nxdomain``, ``nodata``, ``timeout`` or ``error``.
    """
    if server is None:
        return await _getaddrinfo(host, seconds)
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = [server.host]
    resolver.port = server.port
    resolver.lifetime = seconds
    try:
        answer = await resolver.resolve(host, "A")
    except dns.resolver.NXDOMAIN as exc:
        raise StageFailed("dns", "nxdomain", "the name does not exist here") from exc
    except dns.resolver.NoAnswer as exc:
        raise StageFailed("dns", "nodata", "the name has no address here") from exc
    except dns.exception.Timeout as exc:
        raise StageFailed("dns", "timeout", "the resolver did not answer") from exc
    except dns.exception.DNSException as exc:
        raise StageFailed("dns", "error", "the resolver failed") from exc
    return [rr.address for rr in answer]


async def _getaddrinfo(host: str, seconds: float) -> list[str]:
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(
            loop.getaddrinfo(host, None, type=socket.SOCK_STREAM), seconds
        )
    except TimeoutError as exc:
        raise StageFailed("dns", "timeout", "the resolver did not answer") from exc
    except socket.gaierror as exc:
        kind = "nxdomain" if exc.errno == socket.EAI_NONAME else "error"
        raise StageFailed("dns", kind, "the name does not resolve here") from exc
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


async def resolve_doh(
    host: str,
    url: str,
    *,
    route: Route = DIRECT,
    dns_server: DnsServer | None = None,
    verify: ssl.SSLContext | None = None,
    seconds: float = 4.0,
) -> list[str]:
    """Addresses of ``host`` from the DoH service at ``url`` (RFC 8484, POST).

    The DoH server is trusted the ordinary way (certificate authorities, or ``verify``);
    it only tells us where to knock: the server's own pin is checked afterwards anyway.

    Raises:
        StageFailed: stage ``doh``.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise StageFailed("doh", "bad_url", "a DoH URL must be https://")
    doh_host = parts.hostname
    port = parts.port or 443
    context = verify or ssl.create_default_context()
    query = dns.message.make_query(host, dns.rdatatype.A)
    query.id = 0  # RFC 8484 §4.1: 0 makes answers cacheable
    try:
        address = doh_host
        if route.kind == "direct" and not is_ip(doh_host):
            address = (await resolve_system(doh_host, dns_server, seconds))[0]
        sock = await open_tcp(route, address, port, seconds)
        stream = await open_tls(sock, context, None if is_ip(doh_host) else doh_host, None, seconds)
    except StageFailed as exc:
        raise StageFailed("doh", f"{exc.stage}_{exc.kind}", "cannot reach the DoH service") from exc
    http = HttpConnection(stream, doh_host if parts.port is None else f"{doh_host}:{port}", 65535)
    try:
        response = await http.request(
            "POST",
            parts.path or "/dns-query",
            query.to_wire(),
            [("content-type", "application/dns-message"), ("accept", "application/dns-message")],
            seconds=seconds,
        )
    except StageFailed as exc:
        raise StageFailed("doh", exc.kind, "the DoH service did not answer") from exc
    finally:
        await http.close()
    if response.status != 200:
        raise StageFailed("doh", f"http_{response.status}", "the DoH service refused")
    try:
        answer = dns.message.from_wire(response.body[:_DOH_MAX_ANSWER])
    except dns.exception.DNSException as exc:
        raise StageFailed("doh", "bad_answer", "the DoH answer does not parse") from exc
    if answer.rcode() == dns.rcode.NXDOMAIN:
        raise StageFailed("doh", "nxdomain", "DoH says the name does not exist")
    addresses = [
        rr.address for rrset in answer.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
    ]
    if not addresses:
        raise StageFailed("doh", "nodata", "DoH has no address for the name")
    return addresses
