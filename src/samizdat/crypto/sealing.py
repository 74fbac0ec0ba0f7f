"""Sealed sender: the outer box of an envelope (docs/protocol.md §6, protocol/envelope.py).

HPKE (RFC 9180) in base mode, suite DHKEM(X25519, HKDF-SHA256) / HKDF-SHA256 /
ChaCha20-Poly1305, from ``cryptography``, to the recipient device's X25519 *sealing key*,
with ``info = SEALING_INFO``. The box carries no sender information, so the server learns
nothing about who wrote; the AEAD tag covers the whole ciphertext, so a box that was
altered in any way does not open.

(vodozemac's ``PkEncryption`` was the first choice, but its libolm-compatible MAC does not
cover the ciphertext: see docs/decisions/2026-11-29-sealed-sender.md.)

This module returns the two parts of the box; the caller encodes them as a
``protocol.envelope.SealedBox`` (crypto sits below protocol in the layer order).
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hpke, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from samizdat.errors import DecryptionError, LocalError

__all__ = ["SEALED_BOX_VERSION", "SEALING_INFO", "SealedParts", "SealingKey", "seal"]

#: ``SealedBox.version`` of the box this module makes.
SEALED_BOX_VERSION = 1
SEALING_INFO = b"samizdat/sealed-sender/v1"
#: Length of the HPKE encapsulated key for DHKEM(X25519).
_ENC_LENGTH = 32

_SUITE = hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.CHACHA20_POLY1305)


@dataclass(frozen=True)
class SealedParts:
    """The public parts of one box, as ``SealedBox`` carries them."""

    #: The HPKE encapsulated key (the sender's ephemeral X25519 public key).
    ephemeral_key: bytes
    #: The AEAD ciphertext, tag included.
    ciphertext: bytes


def seal(recipient_sealing_key: bytes, plaintext: bytes) -> SealedParts:
    """Encrypt ``plaintext`` to a device's 32-byte X25519 sealing key.

    Raises:
        DecryptionError: the recipient key is malformed (it came from remote input).
    """
    try:
        public = X25519PublicKey.from_public_bytes(recipient_sealing_key)
    except ValueError as exc:
        raise DecryptionError("cannot seal to this key") from exc
    sealed = _SUITE.encrypt(plaintext, public, info=SEALING_INFO)
    return SealedParts(ephemeral_key=sealed[:_ENC_LENGTH], ciphertext=sealed[_ENC_LENGTH:])


class SealingKey:
    """A device's X25519 sealing secret. Never shows it."""

    __slots__ = ("_secret",)

    def __init__(self, secret: X25519PrivateKey) -> None:
        self._secret = secret

    @classmethod
    def generate(cls) -> SealingKey:
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_secret_bytes(cls, secret: bytes) -> SealingKey:
        if len(secret) != 32:
            raise LocalError("sealing secret must be 32 bytes")
        return cls(X25519PrivateKey.from_private_bytes(secret))

    def secret_bytes(self) -> bytes:
        """The 32-byte secret, for storage encrypted at rest only."""
        return self._secret.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def public_bytes(self) -> bytes:
        return self._secret.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def unseal(self, parts: SealedParts) -> bytes:
        """Open a box sealed to this key.

        Raises:
            DecryptionError: the box was tampered with, or sealed to another key.
        """
        try:
            return _SUITE.decrypt(
                parts.ephemeral_key + parts.ciphertext, self._secret, info=SEALING_INFO
            )
        except (InvalidTag, ValueError) as exc:
            raise DecryptionError("sealed box does not open") from exc

    def __repr__(self) -> str:
        return "SealingKey(<secret>)"
