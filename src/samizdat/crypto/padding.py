"""Padding of plaintexts to a few size buckets (DESIGN §5, docs/protocol.md §6), and of
files to Padmé lengths (protocol §12.2).

Messages: ISO/IEC 7816-4 padding (one 0x80 byte, then zeros) up to the smallest bucket
that fits, so a ciphertext's length says only which bucket its plaintext fell in.

Files are too large for a few fixed buckets. :func:`padme` is Padmé (Nikitin, Barman,
Lueks, Underwood, Hubaux, Ford, "Reducing Metadata Leakage from Encrypted Files and
Communication with PURBs", PETS 2019): a length of E+1 bits keeps only its top
floor(log2(E))+1 bits and rounds the rest up, so at most ~12 % is added and a length
leaks O(log log) bits instead of all of them: a file of 1,000,001 bytes and one of
1,015,808 bytes look alike.
"""

from __future__ import annotations

from samizdat.errors import DecryptionError, LocalError

__all__ = ["BUCKETS", "pad", "padme", "unpad"]

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


def padme(length: int) -> int:
    """The Padmé length of a ``length``-byte file: the smallest length, not shorter, whose
    low ``E - floor(log2 E) - 1`` bits are zero (``E = floor(log2 length)``)."""
    if length < 0:
        raise LocalError("negative length")
    exponent = length.bit_length() - 1
    low_bits = exponent - exponent.bit_length()
    if low_bits <= 0:
        return length
    mask = (1 << low_bits) - 1
    return (length + mask) & ~mask
