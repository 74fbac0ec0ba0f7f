"""Attachment blobs: the frames that upload and fetch them, and the reference a message
carries (docs/protocol.md §5.3.11, §12).

Theory of operation
-------------------
A sender encrypts a file in chunks (``crypto.attachment``) and uploads the ciphertext to
its own home server as a *blob*: ``BlobOpen`` names a client-chosen random ``blob_id``,
the total ciphertext size, the SHA-256 of a random read secret and an optional time to
live; ``BlobWrite`` appends one sealed chunk at ``offset``. Every answer is a
``BlobStatus`` saying how many bytes the server holds, so after a broken connection the
client sends ``BlobOpen`` again (it is idempotent) and continues from ``received``.
Writes are whole chunks of ``limits.MAX_BLOB_CHUNK`` bytes (the last may be shorter), so
a chunk's index is ``offset // MAX_BLOB_CHUNK`` and no byte is ever rewritten.

The message that shares the file carries an :class:`Attachment` inside the end-to-end
encryption: the blob id, the read secret, the file key, the SHA-256 of the plaintext and
the uploader's server descriptor. Recipients (on any server) connect to that server and
``BlobRead`` the chunks, anonymously, with the secret; the server compares its SHA-256.

No I/O here.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

from samizdat.protocol import limits
from samizdat.protocol.descriptor import SignedDescriptor
from samizdat.protocol.types import Key32, Millis, RequestId

__all__ = [
    "BlobId",
    "BlobOpen",
    "BlobWrite",
    "BlobRead",
    "BlobDelete",
    "BlobStatus",
    "BlobData",
    "Attachment",
    "encode_attachment",
    "decode_attachment",
]

#: A client-chosen random blob id.
BlobId = Annotated[bytes, Meta(min_length=16, max_length=16)]
_Size = Annotated[int, Meta(ge=0, le=limits.MAX_BLOB_SIZE)]
_Chunk = Annotated[bytes, Meta(max_length=limits.MAX_BLOB_CHUNK)]
_Ttl = Annotated[int, Meta(ge=1, le=2**53)]


class BlobOpen(msgspec.Struct, frozen=True, tag_field="t", tag="blob_open"):
    """Create a blob of this device, or (same fields again) ask how much the server holds.

    ``read_hash`` is SHA-256 of the read secret. ``ttl_ms`` shortens the server's default
    time to live (the mailbox TTL); it never lengthens it.
    """

    rid: RequestId
    blob_id: BlobId
    size: _Size
    read_hash: Key32
    ttl_ms: _Ttl | None = None


class BlobWrite(msgspec.Struct, frozen=True, tag_field="t", tag="blob_write"):
    """Append ``data`` at ``offset``; a retry of bytes already held only answers the status."""

    rid: RequestId
    blob_id: BlobId
    offset: _Size
    data: _Chunk


class BlobRead(msgspec.Struct, frozen=True, tag_field="t", tag="blob_read"):
    """Read the chunk at ``offset`` (a multiple of MAX_BLOB_CHUNK) of a complete blob."""

    rid: RequestId
    blob_id: BlobId
    secret: Key32
    offset: _Size


class BlobDelete(msgspec.Struct, frozen=True, tag_field="t", tag="blob_delete"):
    """Delete a blob of this device (deleting an unknown blob is not an error: retries)."""

    rid: RequestId
    blob_id: BlobId


class BlobStatus(msgspec.Struct, frozen=True, tag_field="t", tag="blob_status"):
    rid: RequestId
    size: _Size
    received: _Size
    expires_at: Millis


class BlobData(msgspec.Struct, frozen=True, tag_field="t", tag="blob_data"):
    rid: RequestId
    offset: _Size
    size: _Size
    data: _Chunk


class Attachment(msgspec.Struct, frozen=True):
    """What a message carries about a file (inside the end-to-end encryption, §12.1)."""

    blob_id: BlobId
    #: The read capability: whoever holds it may download the ciphertext.
    secret: Key32
    #: The AES-256 key of ``crypto.attachment``; fresh for this file.
    key: Key32
    #: SHA-256 of the plaintext; the downloader checks it.
    sha256: Key32
    size: Annotated[int, Meta(ge=0, le=limits.MAX_ATTACHMENT)]
    #: The uploader's home server, where the blob lives.
    server: SignedDescriptor
    media_type: Annotated[str, Meta(max_length=127)] = "application/octet-stream"
    name: Annotated[str, Meta(max_length=limits.MAX_TEXT)] = ""
    #: When the server deletes the blob (the uploader's TTL); 0 if unknown.
    expires_at: Millis = 0
    #: Plaintext bytes the blob encrypts: the file, then zeros up to this length (Padmé,
    #: §12.2), so the server sees a size bucket, not the size. 0: not padded (older senders).
    padded: Annotated[int, Meta(ge=0, le=limits.MAX_ATTACHMENT)] = 0

    def __post_init__(self) -> None:
        if self.padded and self.padded < self.size:
            raise ValueError("padded length shorter than the file")

    def __repr__(self) -> str:
        return f"Attachment(size={self.size})"

    @property
    def blob_plaintext(self) -> int:
        """Plaintext bytes the blob's chunks hold (the file and its padding)."""
        return self.padded or self.size


_attachment_decoder = msgspec.msgpack.Decoder(Attachment)


def encode_attachment(value: Attachment) -> bytes:
    return msgspec.msgpack.encode(value)


def decode_attachment(data: bytes) -> Attachment:
    """Raises msgspec.DecodeError / ValidationError on malformed input."""
    return _attachment_decoder.decode(data)
