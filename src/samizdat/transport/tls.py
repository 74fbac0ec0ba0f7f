"""TLS to a server, anchored on its descriptor, with the key pin checked (protocol §4).

The context trusts the descriptor's own CA alone, with the host name check off: the pin,
not a name, identifies the server, so IP literals and certificates for other names
work. Right after the handshake, before a single byte of HTTP, the SHA-256 of the leaf's
SubjectPublicKeyInfo must equal ``tls_pin``. An impostor with another certificate fails
the handshake (it does not chain to the CA) and never sees more than our ClientHello.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import ssl

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from samizdat.errors import ConnectError, StageFailed
from samizdat.protocol.descriptor import Descriptor

__all__ = ["pin_of", "server_context", "open_tls", "Stream"]

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: Read buffer of the TLS streams; frames are read whole, so above the frame limit.
_STREAM_LIMIT = 4 * 1024 * 1024


def pin_of(certificate_der: bytes) -> bytes:
    """SHA-256 of a certificate's SubjectPublicKeyInfo (DER)."""
    cert = x509.load_der_x509_certificate(certificate_der)
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).digest()


def server_context(descriptor: Descriptor) -> ssl.SSLContext:
    """An ``SSLContext`` that trusts the descriptor's CA and nothing else.

    Raises:
        ConnectError: the descriptor's certificate is unusable.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_verify_locations(cadata=descriptor.tls_ca)
    except (ssl.SSLError, ValueError) as exc:
        raise ConnectError("the server descriptor carries an unusable certificate") from exc
    return context


async def open_tls(
    sock: socket.socket,
    context: ssl.SSLContext,
    sni: str | None,
    pin: bytes | None,
    seconds: float,
) -> Stream:
    """Run the TLS handshake on a connected socket and check the pin.

    Args:
        sni: the server name to send, or None to send none (always None for IP literals).
        pin: the expected SPKI pin; None only for services trusted by CA (DoH).

    Raises:
        StageFailed: stage ``tls`` (no handshake) or ``pin`` (another key answered).
    """
    # The transport gets a duplicate of the socket and owns it alone; ``sock`` is ours and
    # closed on every path. Closing the one the transport holds, when a cancellation came
    # after the handshake (the transport then shuts TLS down gracefully and is not closing
    # yet), freed its descriptor under it; the next socket got the same number and asyncio
    # refused it ("File descriptor N is used by transport"; seen once in CI, a 5-kill run).
    # ``asyncio.timeout``, not ``wait_for``: the connection runs in this task, so the
    # transport takes the duplicate before the first suspension; a ``wait_for`` task
    # cancelled before it started left the duplicate to the garbage collector.
    try:
        async with asyncio.timeout(seconds):
            reader, writer = await asyncio.open_connection(
                sock=sock.dup(),
                ssl=context,
                # An empty name makes asyncio send no SNI at all.
                server_hostname=sni or "",
                ssl_handshake_timeout=seconds,
                limit=_STREAM_LIMIT,
            )
    except ssl.SSLCertVerificationError as exc:
        sock.close()
        raise StageFailed(
            "pin", "mismatch", "the TLS certificate is not the server's (interception?)"
        ) from exc
    except TimeoutError as exc:
        sock.close()
        raise StageFailed("tls", "timeout", "no answer to the TLS handshake") from exc
    except ConnectionResetError as exc:
        sock.close()
        raise StageFailed("tls", "reset", "the TLS handshake was reset") from exc
    except (ssl.SSLError, OSError) as exc:
        sock.close()
        kind = "closed" if isinstance(exc, (ssl.SSLEOFError, EOFError)) else "error"
        raise StageFailed("tls", kind, "the TLS handshake failed") from exc
    except BaseException:
        sock.close()
        raise
    sock.close()
    if pin is not None:
        ssl_object = writer.get_extra_info("ssl_object")
        peer = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if peer is None or pin_of(peer) != pin:
            writer.transport.abort()
            raise StageFailed("pin", "mismatch", "the TLS key does not match the pin")
    return reader, writer
