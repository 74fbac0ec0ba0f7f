"""Attachment chunk encryption (STREAM over AES-256-GCM): round trip, and every change
a server could make (flip, reorder, truncate, extend, swap files) fails to open."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.crypto.attachment import (
    CHUNK_CIPHER,
    CHUNK_PLAIN,
    TAG_SIZE,
    AttachmentCipher,
    chunk_count,
    chunk_plain_size,
    ciphertext_size,
)
from samizdat.errors import DecryptionError, LocalError
from samizdat.protocol import limits

KEY = bytes(range(32))


def seal_all(cipher: AttachmentCipher, data: bytes) -> list[bytes]:
    count = chunk_count(len(data))
    return [
        cipher.seal(i, data[i * CHUNK_PLAIN : (i + 1) * CHUNK_PLAIN], final=i == count - 1)
        for i in range(count)
    ]


def open_all(cipher: AttachmentCipher, chunks: list[bytes]) -> bytes:
    return b"".join(cipher.open(i, c, final=i == len(chunks) - 1) for i, c in enumerate(chunks))


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=3 * CHUNK_PLAIN + 5))
def test_round_trip_and_sizes(size: int) -> None:
    data = bytes(i % 251 for i in range(size))
    cipher = AttachmentCipher(KEY)
    chunks = seal_all(cipher, data)
    assert len(chunks) == chunk_count(size)
    assert sum(len(c) for c in chunks) == ciphertext_size(size)
    assert all(len(c) == CHUNK_CIPHER for c in chunks[:-1])
    assert [chunk_plain_size(size, i) for i in range(len(chunks))] == [
        len(c) - TAG_SIZE for c in chunks
    ]
    assert open_all(cipher, chunks) == data


def test_limits_match_the_construction() -> None:
    assert limits.MAX_BLOB_CHUNK == CHUNK_CIPHER
    assert limits.MAX_BLOB_SIZE == ciphertext_size(limits.MAX_ATTACHMENT)
    assert CHUNK_CIPHER + 1024 < limits.MAX_FRAME


def test_every_tampering_fails() -> None:
    cipher = AttachmentCipher(KEY)
    chunks = seal_all(cipher, b"x" * (3 * CHUNK_PLAIN))
    flipped = bytearray(chunks[1])
    flipped[100] ^= 1
    with pytest.raises(DecryptionError):
        cipher.open(1, bytes(flipped), final=False)
    with pytest.raises(DecryptionError):  # reordered
        open_all(cipher, [chunks[1], chunks[0], chunks[2]])
    with pytest.raises(DecryptionError):  # truncated: chunk 1 was not sealed as the last
        open_all(cipher, chunks[:2])
    extra = cipher.seal(3, b"more", final=True)
    with pytest.raises(DecryptionError):  # extended: chunk 2 was sealed as the last
        open_all(cipher, [*chunks, extra])
    with pytest.raises(DecryptionError):  # another file's key
        open_all(AttachmentCipher(bytes(32)), chunks)
    with pytest.raises(DecryptionError):
        cipher.open(0, b"short", final=True)


def test_local_errors() -> None:
    with pytest.raises(LocalError):
        AttachmentCipher(b"short")
    cipher = AttachmentCipher(KEY)
    with pytest.raises(LocalError):  # a short chunk that is not the last
        cipher.seal(0, b"abc", final=False)
    with pytest.raises(LocalError):
        cipher.seal(-1, b"", final=True)
    with pytest.raises(LocalError):
        chunk_count(-1)
    with pytest.raises(LocalError):
        chunk_plain_size(10, 1)
    assert "0001" not in repr(cipher)
