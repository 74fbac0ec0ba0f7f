"""Server descriptors: where a server is and which TLS key it holds (DESIGN §4, protocol §4).

A descriptor is signed by the server's long-term Ed25519 key. Clients trust the key in
the descriptor, not DNS and not certificate authorities: the descriptor carries the
server's own CA certificate and the SHA-256 pin of its TLS public key.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.crypto.signing import SigningKey, verify
from samizdat.errors import ErrorCode, ProtocolError, SignatureError
from samizdat.protocol import limits
from samizdat.protocol.types import Key32, Millis, Sig64, Url

__all__ = [
    "DESCRIPTOR_CONTEXT",
    "Endpoint",
    "Descriptor",
    "SignedDescriptor",
    "sign_descriptor",
    "open_descriptor",
]

DESCRIPTOR_CONTEXT = b"samizdat/descriptor/v1"


class Endpoint(msgspec.Struct, frozen=True):
    """One way to reach the server. ``url`` is ``wss://host:port/v1/ws`` in version 1."""

    url: Url
    transport: Annotated[str, Meta(max_length=32)] = "wss"


class Descriptor(msgspec.Struct, frozen=True):
    server_key: Key32
    #: Increases with every re-issue; a client keeps the highest valid one.
    seq: Annotated[int, Meta(ge=0)]
    endpoints: Annotated[list[Endpoint], Meta(min_length=1, max_length=limits.MAX_ENDPOINTS)]
    #: DER of the certificate the server's TLS chain is anchored on (self-signed).
    tls_ca: Annotated[bytes, Meta(max_length=limits.MAX_CERT)]
    #: SHA-256 of the TLS leaf certificate's SubjectPublicKeyInfo (DER).
    tls_pin: Annotated[bytes, Meta(min_length=32, max_length=32)]
    issued_at: Millis
    expires_at: Millis


class SignedDescriptor(msgspec.Struct, frozen=True):
    """``body`` is the msgpack encoding of a :class:`Descriptor`."""

    body: Annotated[bytes, Meta(max_length=16384)]
    signature: Sig64


_decoder = msgspec.msgpack.Decoder(Descriptor)


def sign_descriptor(descriptor: Descriptor, server_key: SigningKey) -> SignedDescriptor:
    body = msgspec.msgpack.encode(descriptor)
    return SignedDescriptor(body=body, signature=server_key.sign(DESCRIPTOR_CONTEXT, body))


def open_descriptor(
    signed: SignedDescriptor, now_ms: int, expected_key: bytes | None = None
) -> Descriptor:
    """Verify and decode a descriptor.

    Args:
        signed: the signed descriptor as received.
        now_ms: the current time, to check expiry.
        expected_key: the server key already trusted for this server, if any; a
            descriptor signed by any other key is rejected.

    Raises:
        ProtocolError: malformed, signed by another key, badly signed, or expired.
    """
    try:
        descriptor = _decoder.decode(signed.body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed descriptor") from exc
    if expected_key is not None and descriptor.server_key != expected_key:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "descriptor signed by another server key")
    try:
        verify(descriptor.server_key, DESCRIPTOR_CONTEXT, signed.body, signed.signature)
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "descriptor signature") from exc
    if descriptor.expires_at <= now_ms:
        raise ProtocolError(ErrorCode.BAD_FRAME, "descriptor expired")
    return descriptor
