"""The interface to stored attachment blobs (docs/protocol.md §5.3.11, DESIGN §5).

A blob is ciphertext only: the server never holds a key. Chunks are stored as they
arrive, one row per sealed chunk, so neither an upload nor a download ever holds a whole
blob in memory. Semantics every implementation keeps (``tests/server/test_blobstore.py``
runs the same suite on SQLite and PostgreSQL):

* ``create`` is idempotent: the same owner, id, size and read hash answer the current
  status; anything else under a taken id is ``conflict``. The owner's live blobs (not
  expired) may not add up to more than ``quota_bytes`` (counted at their declared size,
  so an upload cannot be refused half way): else ``quota``.
* ``append`` stores a chunk only at ``offset == received`` and advances ``received`` in
  the same transaction, so the status a client resumes from is never ahead of the data.
  Bytes already held answer the status without writing (a retry).
* Reads, appends and deletes see an expired blob as absent; ``expire`` removes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Protocol

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import limits

__all__ = ["BLOB_CHUNK", "BlobInfo", "BlobChunk", "BlobStore", "check_shape"]

#: Bytes per stored chunk (every chunk but a blob's last).
BLOB_CHUNK: Final = limits.MAX_BLOB_CHUNK


@dataclass(frozen=True)
class BlobInfo:
    size: int
    received: int
    expires_at: int

    @property
    def complete(self) -> bool:
        return self.received == self.size


@dataclass(frozen=True)
class BlobChunk:
    info: BlobInfo
    data: bytes = field(repr=False)


class BlobStore(Protocol):
    """Durable blob storage of one server (or of the nodes sharing a database)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    async def create(
        self,
        owner: bytes,
        blob_id: bytes,
        size: int,
        read_hash: bytes,
        expires_at: int,
        quota_bytes: int,
        now_ms: int,
    ) -> BlobInfo:
        """Create the blob, or answer its status if this owner already created it.

        Raises:
            ProtocolError: ``conflict`` (id taken with other fields), ``quota``.
        """

    async def append(
        self, owner: bytes, blob_id: bytes, offset: int, data: bytes, now_ms: int
    ) -> BlobInfo:
        """Store ``data`` as the chunk at ``offset`` (``offset // BLOB_CHUNK`` is its index).

        Raises:
            ProtocolError: ``not_found`` (no live blob of this owner), ``conflict``
                (``offset`` is neither ``received`` nor bytes already held).
        """

    async def read(
        self, blob_id: bytes, read_hash: bytes, offset: int, now_ms: int
    ) -> BlobChunk | None:
        """The chunk at ``offset`` of a complete live blob with this read hash, else None."""

    async def delete(self, owner: bytes, blob_id: bytes) -> bool:
        """Delete a blob of ``owner`` and its chunks; True if there was one."""

    async def expire(self, now_ms: int) -> int:
        """Delete blobs whose ``expires_at <= now_ms``; returns how many."""

    async def used_bytes(self, owner: bytes, now_ms: int) -> int:
        """Declared size of the owner's live blobs (what the quota counts)."""


def check_shape(size: int, offset: int, length: int) -> None:
    """A write is one whole chunk, or the blob's last one ending exactly at ``size``.

    Raises:
        ProtocolError: ``bad_frame``.
    """
    if offset % BLOB_CHUNK or offset + length > size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "a write is one chunk inside the blob")
    if length != BLOB_CHUNK and offset + length != size:
        raise ProtocolError(ErrorCode.BAD_FRAME, "only the last chunk may be short")
