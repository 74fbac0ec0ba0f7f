"""Ed25519 signatures with domain separation (docs/protocol.md §3).

Every signed structure is signed over ``context || 0x00 || message`` so that a signature
made for one purpose can never be replayed as another.

Signing uses ``cryptography`` (OpenSSL); verifying uses vodozemac (ed25519-dalek's strict
verification), which is ~2× faster: every login verifies a proof and every key upload one
signature per key (docs/performance.md, "Fourth round: login"). Strict verification also
refuses what OpenSSL accepts but no honest signer produces: public keys or ``R`` of small
order (for which anyone can forge) and non-canonical point encodings. Both refuse a
non-canonical ``S``; both use the cofactorless equation.
"""

from __future__ import annotations

import binascii

import vodozemac
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from samizdat.errors import SignatureError

__all__ = ["SigningKey", "signed_message", "verify"]

_KEY_SIZE = 32
_SIGNATURE_SIZE = 64


def signed_message(context: bytes, message: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for ``context``."""
    return context + b"\x00" + message


def verify(public_key: bytes, context: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature.

    Raises:
        SignatureError: the key is malformed or the signature does not verify.
    """
    # vodozemac takes keys and signatures as base64 only (no bytes constructor).
    if len(public_key) != _KEY_SIZE or len(signature) != _SIGNATURE_SIZE:
        raise SignatureError("signature does not verify")
    try:
        key = vodozemac.Ed25519PublicKey.from_base64(_b64(public_key))
        sig = vodozemac.Ed25519Signature.from_base64(_b64(signature))
        key.verify_signature(signed_message(context, message), sig)
    except ValueError as exc:  # vodozemac's KeyException and SignatureException
        raise SignatureError("signature does not verify") from exc


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode("ascii")


class SigningKey:
    """An Ed25519 private key (a user key or a server key). Never shows its secret."""

    __slots__ = ("_key",)

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> SigningKey:
        return cls(Ed25519PrivateKey.from_private_bytes(secret))

    def secret_bytes(self) -> bytes:
        """The 32-byte seed, for storage encrypted at rest only."""
        from cryptography.hazmat.primitives import serialization

        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_bytes(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, context: bytes, message: bytes) -> bytes:
        return self._key.sign(signed_message(context, message))

    def __repr__(self) -> str:
        return "SigningKey(<secret>)"
