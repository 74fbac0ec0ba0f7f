"""The server side of attachment blobs: checks and answers of §5.3.11 (DESIGN §5).

The session hands every blob frame here with the device it is logged in as (``None``
for an anonymous connection). Uploads and deletes belong to the logged-in device (the
quota is per device); reads are anonymous and authorised by the read secret alone,
since recipients live on other servers and have no account here. A wrong secret, an
unknown id, an expired or an incomplete blob all answer the same ``not_found``, so a
reader learns nothing about blobs it cannot read.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.protocol import blobs as b
from samizdat.protocol import frames as f
from samizdat.server.blobstore.base import BLOB_CHUNK, BlobInfo, BlobStore
from samizdat.server.blobstore.postgres import PostgresBlobStore
from samizdat.server.blobstore.sqlite import SqliteBlobStore

__all__ = ["DEFAULT_BLOB_QUOTA", "BlobPolicy", "BlobService", "make_blob_store"]

_log = logging.getLogger(__name__)

#: Bytes of live blobs one device may hold (declared sizes): a few full-size attachments.
DEFAULT_BLOB_QUOTA: Final = 1024 * 1024 * 1024


@dataclass(frozen=True)
class BlobPolicy:
    quota_bytes: int = DEFAULT_BLOB_QUOTA
    #: The longest a blob lives (the mailbox time to live, DESIGN §5).
    max_ttl_ms: int = 30 * 86_400_000


class BlobService:
    """Answers blob frames from one :class:`BlobStore`."""

    def __init__(self, store: BlobStore, policy: BlobPolicy, now_ms: Callable[[], int]) -> None:
        self.store = store
        self._policy = policy
        self._now_ms = now_ms
        self._expiry: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return "BlobService(...)"

    async def open(self) -> None:
        """Open the store and start deleting expired blobs in the background."""
        await self.store.open()
        interval = max(0.1, min(600.0, self._policy.max_ttl_ms / 10_000_000))
        self._expiry = asyncio.create_task(self._expire(interval), name="samizdat-blob-expiry")

    async def close(self) -> None:
        task, self._expiry = self._expiry, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.store.close()

    async def _expire(self, interval: float) -> None:
        while True:
            try:
                removed = await self.store.expire(self._now_ms())
            except Exception:
                _log.exception("blob expiry failed")
                removed = 0
            if removed:
                _log.info("expired %d blobs past their time to live", removed)
            await asyncio.sleep(interval)

    async def handle(
        self, frame: b.BlobOpen | b.BlobWrite | b.BlobRead | b.BlobDelete, device_id: bytes | None
    ) -> f.ServerFrame:
        now = self._now_ms()
        if isinstance(frame, b.BlobRead):
            return await self._read(frame, now)
        if device_id is None:
            raise ProtocolError(ErrorCode.NOT_AUTHENTICATED, "log in first")
        match frame:
            case b.BlobOpen():
                ttl = min(frame.ttl_ms or self._policy.max_ttl_ms, self._policy.max_ttl_ms)
                info = await self.store.create(
                    device_id,
                    frame.blob_id,
                    frame.size,
                    frame.read_hash,
                    now + ttl,
                    self._policy.quota_bytes,
                    now,
                )
                return _status(frame.rid, info)
            case b.BlobWrite():
                return await self._write(frame, device_id, now)
            case b.BlobDelete():
                await self.store.delete(device_id, frame.blob_id)
                return f.Ok(rid=frame.rid)
        raise ProtocolError(ErrorCode.BAD_FRAME, "unexpected frame")  # pragma: no cover

    async def _write(self, frame: b.BlobWrite, device_id: bytes, now: int) -> b.BlobStatus:
        # Whole chunks only, so a chunk's index is its offset / BLOB_CHUNK (§5.3.11).
        if frame.offset % BLOB_CHUNK:
            raise ProtocolError(ErrorCode.BAD_FRAME, "offset is not on a chunk boundary")
        info = await self.store.append(device_id, frame.blob_id, frame.offset, frame.data, now)
        return _status(frame.rid, info)

    async def _read(self, frame: b.BlobRead, now: int) -> b.BlobData:
        if frame.offset % BLOB_CHUNK:
            raise ProtocolError(ErrorCode.BAD_FRAME, "offset is not on a chunk boundary")
        chunk = await self.store.read(
            frame.blob_id, hashlib.sha256(frame.secret).digest(), frame.offset, now
        )
        if chunk is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, "no such blob")
        return b.BlobData(rid=frame.rid, offset=frame.offset, size=chunk.info.size, data=chunk.data)


def _status(rid: int, info: BlobInfo) -> b.BlobStatus:
    return b.BlobStatus(rid=rid, size=info.size, received=info.received, expires_at=info.expires_at)


def make_blob_store(data_dir: Path, store_url: str | None) -> BlobStore:
    """Blobs beside the mailbox store: ``data_dir/blobs.db``, or the PostgreSQL database."""
    if store_url is None:
        return SqliteBlobStore(data_dir / "blobs.db")
    return PostgresBlobStore(store_url)
