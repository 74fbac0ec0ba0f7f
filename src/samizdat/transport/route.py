"""How bytes leave this machine: directly, or through a SOCKS5 or HTTP CONNECT proxy.

A route only opens a TCP connection to ``(host, port)``; TLS and everything above it
happen end to end with the server, so a proxy sees the server's address and port (and
the TLS ClientHello), never a frame. Through a proxy the host name goes to the proxy
unresolved (``socks5h`` behaviour): local DNS may be the thing that is blocked.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from python_socks import ProxyConnectionError, ProxyError, ProxyTimeoutError
from python_socks.async_.asyncio import Proxy

from samizdat.errors import LocalError, StageFailed
from samizdat.protocol.relay import RelayLink

__all__ = ["Route", "DIRECT", "parse_proxy", "proxy_from_env", "open_tcp"]

_SCHEMES = {"socks5": "socks5", "socks5h": "socks5", "http": "http", "https": "http"}


@dataclass(frozen=True)
class Route:
    """``kind`` is ``direct``, ``socks5``, ``http`` or ``relay``; ``url`` the proxy's URL
    (for a relay: ``relay:<link id>``)."""

    kind: str
    url: str = ""
    #: The samizdat relay (protocol §11) for kind ``relay``; holds a secret, never shown.
    relay: RelayLink | None = field(default=None, compare=False, repr=False)
    #: How the relay itself is reached (a proxy, or direct).
    via: Route | None = field(default=None, compare=False)

    @property
    def label(self) -> str:
        """Human words for logs and probe output (no credentials)."""
        if self.kind == "direct":
            return "direct"
        if self.kind == "relay":
            return "samizdat relay" + (f" via {self.via.label}" if self.via else "")
        parts = urlsplit(self.url)
        return f"{self.kind} proxy {parts.hostname}:{parts.port}"


DIRECT = Route("direct")


def parse_proxy(url: str) -> Route:
    """``socks5://h:p``, ``socks5h://h:p`` or ``http://h:p`` -> a :class:`Route`.

    Raises:
        LocalError: not a proxy URL we can use.
    """
    parts = urlsplit(url.strip())
    kind = _SCHEMES.get(parts.scheme.lower())
    if kind is None or not parts.hostname or parts.port is None:
        raise LocalError("a proxy must look like socks5://HOST:PORT or http://HOST:PORT")
    # python-socks wants socks5://; socks5h means the same to us (names always go remote).
    normal = parts._replace(scheme="socks5" if kind == "socks5" else "http").geturl()
    return Route(kind, normal)


def proxy_from_env(env: Mapping[str, str] | None = None) -> Route | None:
    """The proxy the usual variables name: ``ALL_PROXY``, then ``HTTPS_PROXY`` (any case)."""
    env = os.environ if env is None else env
    for name in ("ALL_PROXY", "all_proxy", "HTTPS_PROXY", "https_proxy"):
        value = env.get(name, "").strip()
        if value:
            return parse_proxy(value)
    return None


async def open_tcp(route: Route, host: str, port: int, seconds: float) -> socket.socket:
    """A connected, non-blocking TCP socket to ``host:port`` over ``route``.

    ``host`` is an address for direct routes, and may be a name for proxies.

    Raises:
        StageFailed: stage ``tcp`` (or ``proxy`` when the proxy itself failed).
    """
    if route.kind == "direct":
        return await _direct(host, port, seconds)
    proxy = Proxy.from_url(route.url, rdns=True)
    try:
        sock = await proxy.connect(host, port, timeout=seconds)
    except ProxyTimeoutError as exc:
        raise StageFailed("proxy", "timeout", "the proxy did not answer in time") from exc
    except ProxyConnectionError as exc:
        raise StageFailed("proxy", "unreachable", "cannot connect to the proxy") from exc
    except ProxyError as exc:
        raise StageFailed("tcp", "proxy_refused", "the proxy refused the connection") from exc
    except OSError as exc:
        raise StageFailed("proxy", _os_kind(exc), "proxy connection failed") from exc
    sock.setblocking(False)
    return sock


async def _direct(host: str, port: int, seconds: float) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), seconds)
    except TimeoutError as exc:
        sock.close()
        raise StageFailed("tcp", "timeout", "no answer to the TCP connection") from exc
    except OSError as exc:
        sock.close()
        raise StageFailed("tcp", _os_kind(exc), "TCP connection failed") from exc
    except BaseException:
        sock.close()
        raise
    return sock


def _os_kind(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError):
        return "reset"
    return "unreachable"
