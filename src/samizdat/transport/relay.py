"""Reaching a server through a samizdat relay (protocol §11): TLS to the relay, the proof,
then the server's own pinned TLS inside that tunnel (TLS in TLS).

The relay sees the inner TLS records only; it cannot read or change a frame without the
inner handshake or a record failing. The relay's own certificate is checked too (its pin
from the link), so an interceptor posing as the relay never sees a proof.
"""

from __future__ import annotations

import asyncio
import os
import ssl

from samizdat.errors import ProtocolError, StageFailed
from samizdat.protocol.relay import MAX_HEAD, RelayLink, make_proof, proof_request
from samizdat.transport.route import DIRECT, Route, open_tcp
from samizdat.transport.tls import Stream, open_tls, pin_of

__all__ = ["relay_context", "open_relay", "tls_over", "split_address"]


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> (host, port).

    Raises:
        ValueError: no port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError("a relay address must be HOST:PORT")
    return host.strip("[]"), int(port)


def relay_context(link: RelayLink) -> ssl.SSLContext:
    """Trust the link's certificate alone, or the system's CAs when it carries none.

    Raises:
        StageFailed: stage ``relay``: the link's certificate is unusable.
    """
    if not link.tls_ca:
        context = ssl.create_default_context()
        context.check_hostname = bool(link.sni)
    else:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=link.tls_ca)
        except (ssl.SSLError, ValueError) as exc:
            raise StageFailed("relay", "bad_link", "the relay link's certificate") from exc
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


async def open_relay(
    link: RelayLink,
    server_key: bytes,
    now_ms: int,
    seconds: float,
    route: Route = DIRECT,
) -> Stream:
    """A stream through ``link``'s relay to the server with ``server_key``.

    Tries the link's addresses in order. What comes out is a byte tunnel to the server:
    run :func:`tls_over` on it next.

    Raises:
        StageFailed: ``tcp``/``tls``/``pin`` to the relay, or ``relay``: the relay
            refused (``unknown_server``: it does not serve this server; ``refused``:
            anything else, such as a revoked link answered with the decoy site).
    """
    context = relay_context(link)
    failure: StageFailed | None = None
    for address in link.addresses:
        try:
            host, port = split_address(address)
        except ValueError:
            failure = StageFailed("relay", "bad_link", "a relay address is malformed")
            continue
        try:
            sock = await open_tcp(route, host, port, seconds)
            reader, writer = await open_tls(
                sock, context, link.sni or None, link.tls_pin or None, seconds
            )
        except StageFailed as exc:
            failure = exc
            continue
        try:
            proof = make_proof(link, server_key, now_ms, os.urandom(16))
            writer.write(proof_request(link, proof, link.sni or host))
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), seconds)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            writer.transport.abort()
            failure = StageFailed("relay", "cut", "the relay closed the connection")
            failure.__cause__ = exc
            continue
        except TimeoutError as exc:
            writer.transport.abort()
            raise StageFailed("relay", "timeout", "the relay did not answer") from exc
        except BaseException:
            writer.transport.abort()
            raise
        status = head[:12]
        if len(head) > MAX_HEAD or status != b"HTTP/1.1 101":
            writer.transport.abort()
            kind = "unknown_server" if status == b"HTTP/1.1 421" else "refused"
            raise StageFailed("relay", kind, "the relay refused the connection")
        return reader, writer
    raise failure or StageFailed("relay", "bad_link", "the relay link lists no address")


async def tls_over(
    stream: Stream, context: ssl.SSLContext, sni: str | None, pin: bytes, seconds: float
) -> Stream:
    """The server's TLS inside an open tunnel, with the pin checked (as :func:`open_tls`).

    Raises:
        StageFailed: stage ``tls`` or ``pin``.
    """
    reader, writer = stream
    try:
        await writer.start_tls(context, server_hostname=sni, ssl_handshake_timeout=seconds)
    except ssl.SSLCertVerificationError as exc:
        writer.transport.abort()
        raise StageFailed("pin", "mismatch", "the TLS certificate is not the server's") from exc
    except (ssl.SSLError, OSError, TimeoutError, ProtocolError) as exc:
        writer.transport.abort()
        raise StageFailed("tls", "error", "the TLS handshake through the relay failed") from exc
    except BaseException:
        writer.transport.abort()
        raise
    ssl_object = writer.get_extra_info("ssl_object")
    peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if peer is None or pin_of(peer) != pin:
        writer.transport.abort()
        raise StageFailed("pin", "mismatch", "the TLS key does not match the pin")
    return reader, writer
