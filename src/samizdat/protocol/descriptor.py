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
from samizdat.protocol.relay import RelayLink
from samizdat.protocol.types import Key32, Millis, Sig64, Url

__all__ = [
    "DESCRIPTOR_CONTEXT",
    "ROTATION_CONTEXT",
    "MAX_ROTATIONS",
    "Endpoint",
    "KeyRotation",
    "SignedRotation",
    "sign_rotation",
    "open_rotation",
    "Descriptor",
    "SignedDescriptor",
    "sign_descriptor",
    "open_descriptor",
]

DESCRIPTOR_CONTEXT = b"samizdat/descriptor/v1"
ROTATION_CONTEXT = b"samizdat/key-rotation/v1"
#: Rotation hops a descriptor may carry: clients holding any of the last four keys follow.
MAX_ROTATIONS = 4


class KeyRotation(msgspec.Struct, frozen=True):
    """``old_key`` hands the server over to ``new_key`` (protocol §4)."""

    old_key: Key32
    new_key: Key32
    issued_at: Millis


class SignedRotation(msgspec.Struct, frozen=True):
    """``body`` is the msgpack of a :class:`KeyRotation`, signed by both keys.

    The old key's signature is the handover; the new key's proves its holder asked for it,
    so nobody can point a server at a key they do not hold (or claim a server's key).
    """

    body: Annotated[bytes, Meta(max_length=256)]
    old_signature: Sig64
    new_signature: Sig64


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
    #: Relays the operator vouches for (protocol §11.4); absent in older descriptors.
    relays: Annotated[list[RelayLink], Meta(max_length=4)] = []
    #: Key rotations, oldest first, ending at ``server_key`` (protocol §4); absent before.
    rotations: Annotated[list[SignedRotation], Meta(max_length=MAX_ROTATIONS)] = []


class SignedDescriptor(msgspec.Struct, frozen=True):
    """``body`` is the msgpack encoding of a :class:`Descriptor`."""

    body: Annotated[bytes, Meta(max_length=16384)]
    signature: Sig64


_decoder = msgspec.msgpack.Decoder(Descriptor)
_rotation_decoder = msgspec.msgpack.Decoder(KeyRotation)


def sign_rotation(old: SigningKey, new: SigningKey, issued_at: int) -> SignedRotation:
    """The statement that ``old`` hands the server over to ``new``, signed by both."""
    body = msgspec.msgpack.encode(
        KeyRotation(old_key=old.public_bytes, new_key=new.public_bytes, issued_at=issued_at)
    )
    return SignedRotation(
        body=body,
        old_signature=old.sign(ROTATION_CONTEXT, body),
        new_signature=new.sign(ROTATION_CONTEXT, body),
    )


def open_rotation(signed: SignedRotation) -> KeyRotation:
    """Decode a rotation and check both signatures.

    Raises:
        ProtocolError: malformed (``bad_frame``) or either signature invalid.
    """
    try:
        rotation = _rotation_decoder.decode(signed.body)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(ErrorCode.BAD_FRAME, "malformed key rotation") from exc
    try:
        verify(rotation.old_key, ROTATION_CONTEXT, signed.body, signed.old_signature)
        verify(rotation.new_key, ROTATION_CONTEXT, signed.body, signed.new_signature)
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "key rotation signature") from exc
    return rotation


def _follows(rotations: list[SignedRotation], trusted: bytes, target: bytes) -> bool:
    """Whether a chain of valid rotations leads from ``trusted`` to ``target``.

    Hops before the one that leaves ``trusted`` are ignored (a client that already
    followed them); from there every hop must start where the previous one ended.
    """
    current: bytes | None = None
    for signed in rotations:
        rotation = open_rotation(signed)
        if current is None:
            if rotation.old_key != trusted:
                continue
        elif rotation.old_key != current:
            raise ProtocolError(ErrorCode.BAD_SIGNATURE, "broken key rotation chain")
        current = rotation.new_key
    return current == target


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
    try:
        verify(descriptor.server_key, DESCRIPTOR_CONTEXT, signed.body, signed.signature)
    except SignatureError as exc:
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "descriptor signature") from exc
    if (
        expected_key is not None
        and descriptor.server_key != expected_key
        and not _follows(descriptor.rotations, expected_key, descriptor.server_key)
    ):
        raise ProtocolError(ErrorCode.BAD_SIGNATURE, "descriptor signed by another server key")
    if descriptor.expires_at <= now_ms:
        raise ProtocolError(ErrorCode.BAD_FRAME, "descriptor expired")
    return descriptor
