"""At-rest encryption of the client's local store (DESIGN §8: a seized device).

- The passphrase and a random salt go through Argon2id (RFC 9106's second recommended
  setting: 64 MiB, t=3, p=4) to a 32-byte master key.
- HKDF-SHA-256 splits the master key into independent subkeys: one for AES-256-GCM
  records, one for HMAC lookup ids, one for vodozemac pickles.
- Every record is AES-256-GCM with a fresh 96-bit nonce (passed in: this module does no
  I/O and draws no randomness) and associated data binding the record kind and lookup
  id, so a ciphertext moved to another row or kind does not open.
- Names the store must look up (contact names, session ids) are replaced by
  HMAC-SHA-256 under the lookup key: equal names give equal ids, and no name is stored.
- A verifier record (a known plaintext under a known kind) tells a wrong passphrase
  apart from a damaged record.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from samizdat.errors import DecryptionError, LocalError, WrongPassphrase

__all__ = [
    "NONCE_SIZE",
    "SALT_SIZE",
    "KdfParams",
    "AtRestKey",
]

NONCE_SIZE = 12
SALT_SIZE = 16
_FORMAT = b"samizdat/at-rest/v1"
_VERIFIER_KIND = "verifier"
_VERIFIER_TEXT = b"samizdat store verifier v1"


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters; stored beside the salt so they can be raised later."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def __post_init__(self) -> None:
        if self.memory_kib < 8 * self.lanes or self.iterations < 1 or self.lanes < 1:
            raise LocalError("invalid Argon2id parameters")


class AtRestKey:
    """Keys derived from the passphrase. Never shows them."""

    __slots__ = ("_aead", "_lookup_key", "_pickle_key")

    def __init__(self, master: bytes) -> None:
        if len(master) != 32:
            raise LocalError("master key must be 32 bytes")
        self._aead = AESGCM(_subkey(master, b"record"))
        self._lookup_key = _subkey(master, b"lookup")
        self._pickle_key = _subkey(master, b"pickle")

    @classmethod
    def derive(cls, passphrase: str, salt: bytes, params: KdfParams) -> AtRestKey:
        """Run Argon2id over the passphrase (slow on purpose: ~0.2 s)."""
        if len(salt) != SALT_SIZE:
            raise LocalError("salt must be 16 bytes")
        kdf = Argon2id(
            salt=salt,
            length=32,
            iterations=params.iterations,
            lanes=params.lanes,
            memory_cost=params.memory_kib,
        )
        return cls(kdf.derive(passphrase.encode("utf-8")))

    @property
    def pickle_key(self) -> bytes:
        """A 32-byte key for vodozemac pickles (stored inside encrypted records too)."""
        return self._pickle_key

    def lookup_id(self, kind: str, name: str | bytes) -> bytes:
        """A 32-byte HMAC of ``name`` for ``kind``: lets the store find a row without the name."""
        raw = name.encode("utf-8") if isinstance(name, str) else name
        return hmac.new(self._lookup_key, _aad(kind, raw), hashlib.sha256).digest()

    def encrypt(self, kind: str, lookup: bytes, plaintext: bytes, nonce: bytes) -> bytes:
        """``nonce || AES-256-GCM(plaintext)``, bound to ``kind`` and ``lookup``.

        ``nonce`` must be 12 fresh random bytes for every call.
        """
        if len(nonce) != NONCE_SIZE:
            raise LocalError("nonce must be 12 bytes")
        return nonce + self._aead.encrypt(nonce, plaintext, _aad(kind, lookup))

    def decrypt(self, kind: str, lookup: bytes, blob: bytes) -> bytes:
        """Raises DecryptionError if the record was altered or moved."""
        if len(blob) < NONCE_SIZE + 16:
            raise DecryptionError("record too short")
        try:
            return self._aead.decrypt(blob[:NONCE_SIZE], blob[NONCE_SIZE:], _aad(kind, lookup))
        except InvalidTag as exc:
            raise DecryptionError("record does not authenticate") from exc

    def make_verifier(self, nonce: bytes) -> bytes:
        return self.encrypt(_VERIFIER_KIND, b"", _VERIFIER_TEXT, nonce)

    def check_verifier(self, blob: bytes) -> None:
        """Raises WrongPassphrase unless this key made ``blob``."""
        try:
            ok = self.decrypt(_VERIFIER_KIND, b"", blob) == _VERIFIER_TEXT
        except DecryptionError:
            ok = False
        if not ok:
            raise WrongPassphrase("the passphrase does not open this store")

    def __repr__(self) -> str:
        return "AtRestKey(<secret>)"


def _aad(kind: str, lookup: bytes) -> bytes:
    encoded = kind.encode("utf-8")
    return _FORMAT + len(encoded).to_bytes(2, "big") + encoded + lookup


def _subkey(master: bytes, label: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=_FORMAT + b"/" + label
    ).derive(master)
