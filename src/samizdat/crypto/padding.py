"""Padding of plaintexts to a few size buckets (DESIGN §5, docs/protocol.md §6).

ISO/IEC 7816-4 padding (one 0x80 byte, then zeros) up to the smallest bucket that fits,
so a ciphertext's length says only which bucket its plaintext fell in.
"""

from __future__ import annotations

from samizdat.errors import DecryptionError, LocalError

__all__ = ["BUCKETS", "pad", "unpad"]

BUCKETS: tuple[int, ...] = (256, 1024, 4096, 16384, 65536)


def pad(plaintext: bytes) -> bytes:
    """Pad to the smallest bucket holding ``len(plaintext) + 1`` bytes."""
    needed = len(plaintext) + 1
    for size in BUCKETS:
        if needed <= size:
            return plaintext + b"\x80" + b"\x00" * (size - needed)
    raise LocalError("plaintext larger than the largest padding bucket")


def unpad(padded: bytes) -> bytes:
    """Remove padding added by :func:`pad`.

    Raises:
        DecryptionError: the padding is malformed.
    """
    stripped = padded.rstrip(b"\x00")
    if not stripped or stripped[-1] != 0x80:
        raise DecryptionError("bad padding")
    return stripped[:-1]
