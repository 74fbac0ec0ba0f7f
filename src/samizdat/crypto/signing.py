"""Ed25519 signatures with domain separation (docs/protocol.md §3).

Every signed structure is signed over ``context || 0x00 || message`` so that a signature
made for one purpose can never be replayed as another.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from samizdat.errors import SignatureError

__all__ = ["SigningKey", "signed_message", "verify"]


def signed_message(context: bytes, message: bytes) -> bytes:
    """The exact bytes an Ed25519 signature covers for ``context``."""
    return context + b"\x00" + message


def verify(public_key: bytes, context: bytes, message: bytes, signature: bytes) -> None:
    """Check an Ed25519 signature.

    Raises:
        SignatureError: the key is malformed or the signature does not verify.
    """
    try:
        key = Ed25519PublicKey.from_public_bytes(public_key)
        key.verify(signature, signed_message(context, message))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError("signature does not verify") from exc


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
