"""Encryption of attachments in chunks, one fresh key per file (docs/protocol.md §12.2).

The construction is STREAM (Hoang, Reyhanitabar, Rogaway, Vizár, "Online
Authenticated-Encryption and its Nonce-Reuse Misuse-Resistance", CRYPTO 2015) over
AES-256-GCM, with nothing invented on top:

- The plaintext is cut into chunks of :data:`CHUNK_PLAIN` bytes (the last may be shorter;
  an empty file is one empty chunk). Chunk ``i`` (from 0) is sealed with AES-256-GCM under
  the file key, nonce = ``i`` as 12 bytes big-endian, and associated data =
  ``b"samizdat/attachment/v1" || u64be(i) || u8(final)`` where ``final`` is 1 for the last
  chunk only.
- Each key encrypts exactly one file, so a counter nonce never repeats under a key.
- Reordering changes ``i`` (the tag fails); truncation after any chunk fails because that
  chunk was sealed with ``final = 0`` but is opened as the last one; extension fails
  because nothing opens after a ``final = 1`` chunk. Together with the SHA-256 of the
  plaintext carried beside the key (checked by the downloader) a server can only make a
  download fail, never change what it yields.

No I/O and no randomness here: the caller draws the key (32 random bytes) and streams.
"""

from __future__ import annotations

import struct
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from samizdat.errors import DecryptionError, LocalError

__all__ = [
    "KEY_SIZE",
    "CHUNK_PLAIN",
    "TAG_SIZE",
    "CHUNK_CIPHER",
    "chunk_count",
    "ciphertext_size",
    "chunk_plain_size",
    "AttachmentCipher",
]

KEY_SIZE: Final = 32
#: Plaintext bytes per chunk: one sealed chunk travels in one frame (limits.MAX_FRAME).
CHUNK_PLAIN: Final = 128 * 1024
TAG_SIZE: Final = 16
CHUNK_CIPHER: Final = CHUNK_PLAIN + TAG_SIZE
_CONTEXT: Final = b"samizdat/attachment/v1"
_AD: Final = struct.Struct(">QB")


def chunk_count(size: int) -> int:
    """Chunks a plaintext of ``size`` bytes is cut into (at least one)."""
    if size < 0:
        raise LocalError("negative size")
    return max(1, -(-size // CHUNK_PLAIN))


def chunk_plain_size(size: int, index: int) -> int:
    """Plaintext bytes in chunk ``index`` of a file of ``size`` bytes."""
    count = chunk_count(size)
    if not 0 <= index < count:
        raise LocalError("chunk index out of range")
    return CHUNK_PLAIN if index < count - 1 else size - CHUNK_PLAIN * (count - 1)


def ciphertext_size(size: int) -> int:
    """Bytes of the encrypted blob of a plaintext of ``size`` bytes."""
    return size + chunk_count(size) * TAG_SIZE


def _nonce_and_ad(index: int, final: bool) -> tuple[bytes, bytes]:
    if not 0 <= index < 2**64:
        raise LocalError("chunk index out of range")
    return index.to_bytes(12, "big"), _CONTEXT + _AD.pack(index, 1 if final else 0)


class AttachmentCipher:
    """Seals and opens the chunks of one file under its key. Never shows the key."""

    __slots__ = ("_aead",)

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise LocalError("an attachment key is 32 bytes")
        self._aead = AESGCM(key)

    def __repr__(self) -> str:
        return "AttachmentCipher(<key>)"

    def seal(self, index: int, plaintext: bytes, final: bool) -> bytes:
        """Chunk ``index`` of the file, ``final`` for the last one."""
        if len(plaintext) > CHUNK_PLAIN or (not final and len(plaintext) != CHUNK_PLAIN):
            raise LocalError("only the last chunk may be shorter than CHUNK_PLAIN")
        nonce, ad = _nonce_and_ad(index, final)
        return self._aead.encrypt(nonce, plaintext, ad)

    def open(self, index: int, ciphertext: bytes, final: bool) -> bytes:
        """The plaintext of chunk ``index``.

        Raises:
            DecryptionError: the chunk was changed, moved, or is not the one expected
                (including a last chunk that was not sealed as the last).
        """
        if len(ciphertext) < TAG_SIZE or len(ciphertext) > CHUNK_CIPHER:
            raise DecryptionError("attachment chunk has a wrong size")
        nonce, ad = _nonce_and_ad(index, final)
        try:
            return self._aead.decrypt(nonce, ciphertext, ad)
        except InvalidTag as exc:
            raise DecryptionError("attachment chunk does not open") from exc
