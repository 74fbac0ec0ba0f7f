"""Blobs in their own SQLite database beside the mailbox store (docs/decisions/
2026-11-29-attachment-blobs.md).

A separate file (``blobs.db``) with its own connection, so a 128 KiB chunk write never
sits in the mailbox store's group commit and delays deposits. Each append is one
transaction (chunk row + ``received``), ``synchronous=FULL``: a status the server
answered is on disk. ``secure_delete`` overwrites the pages of deleted and expired blobs.
All SQL runs on one worker thread at a time (``asyncio.to_thread`` under a lock).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from samizdat.errors import ErrorCode, LocalError, ProtocolError
from samizdat.server.blobstore.base import BLOB_CHUNK, BlobChunk, BlobInfo, check_shape
from samizdat.server.blobstore.migrations import BLOB_MIGRATIONS
from samizdat.server.store.sqlite import migrate

__all__ = ["SqliteBlobStore"]

_T = TypeVar("_T")


class SqliteBlobStore:
    """:class:`~samizdat.server.blobstore.base.BlobStore` in one SQLite file."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "SqliteBlobStore(<file>)"

    async def open(self) -> None:
        if self._conn is not None:
            raise LocalError("blob store already open")
        self._conn = await asyncio.to_thread(self._connect)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self._path, isolation_level=None, check_same_thread=False, timeout=30
        )
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        migrate(conn, BLOB_MIGRATIONS)
        return conn

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await asyncio.to_thread(self._locked, conn.close)

    def _locked(self, fn: Callable[[], _T]) -> _T:
        with self._lock:
            return fn()

    async def _run(self, fn: Callable[[sqlite3.Connection], _T], write: bool = True) -> _T:
        conn = self._conn
        if conn is None:
            raise LocalError("blob store is not open")

        def job() -> _T:
            if not write:
                return fn(conn)
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

        return await asyncio.to_thread(self._locked, job)

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
        def run(conn: sqlite3.Connection) -> BlobInfo:
            row = conn.execute(
                "SELECT owner, size, read_hash, received, expires_at FROM blobs WHERE blob_id = ?",
                (blob_id,),
            ).fetchone()
            if row is not None and row[4] > now_ms:
                if (bytes(row[0]), row[1], bytes(row[2])) != (owner, size, read_hash):
                    raise ProtocolError(ErrorCode.CONFLICT, "blob id taken")
                return BlobInfo(size=row[1], received=row[3], expires_at=row[4])
            if row is not None:  # expired, not swept yet: the id is free again
                _delete(conn, blob_id)
            (used,) = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ? AND expires_at > ?",
                (owner, now_ms),
            ).fetchone()
            if used + size > quota_bytes:
                raise ProtocolError(ErrorCode.QUOTA, "blob quota of this device exceeded")
            conn.execute(
                "INSERT INTO blobs (blob_id, owner, size, received, read_hash, expires_at,"
                " created_at) VALUES (?, ?, ?, 0, ?, ?, ?)",
                (blob_id, owner, size, read_hash, expires_at, now_ms),
            )
            return BlobInfo(size=size, received=0, expires_at=expires_at)

        return await self._run(run)

    async def append(
        self, owner: bytes, blob_id: bytes, offset: int, data: bytes, now_ms: int
    ) -> BlobInfo:
        def run(conn: sqlite3.Connection) -> BlobInfo:
            row = conn.execute(
                "SELECT size, received, expires_at FROM blobs"
                " WHERE blob_id = ? AND owner = ? AND expires_at > ?",
                (blob_id, owner, now_ms),
            ).fetchone()
            if row is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such blob")
            size, received, expires_at = row
            check_shape(size, offset, len(data))
            if offset + len(data) <= received:
                return BlobInfo(size=size, received=received, expires_at=expires_at)
            if offset != received:
                raise ProtocolError(ErrorCode.CONFLICT, f"expected offset {received}")
            conn.execute(
                "INSERT INTO blob_chunks (blob_id, idx, data) VALUES (?, ?, ?)",
                (blob_id, offset // BLOB_CHUNK, data),
            )
            received += len(data)
            conn.execute("UPDATE blobs SET received = ? WHERE blob_id = ?", (received, blob_id))
            return BlobInfo(size=size, received=received, expires_at=expires_at)

        return await self._run(run)

    async def read(
        self, blob_id: bytes, read_hash: bytes, offset: int, now_ms: int
    ) -> BlobChunk | None:
        def run(conn: sqlite3.Connection) -> BlobChunk | None:
            row = conn.execute(
                "SELECT b.size, b.received, b.expires_at, b.read_hash, c.data"
                " FROM blobs b JOIN blob_chunks c ON c.blob_id = b.blob_id"
                " WHERE b.blob_id = ? AND c.idx = ? AND b.expires_at > ?"
                " AND b.received = b.size",
                (blob_id, offset // BLOB_CHUNK, now_ms),
            ).fetchone()
            if row is None or bytes(row[3]) != read_hash:
                return None
            return BlobChunk(BlobInfo(size=row[0], received=row[1], expires_at=row[2]), row[4])

        return await self._run(run, write=False)

    async def delete(self, owner: bytes, blob_id: bytes) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM blobs WHERE blob_id = ? AND owner = ?", (blob_id, owner)
            ).fetchone()
            if row is None:
                return False
            _delete(conn, blob_id)
            return True

        deleted = await self._run(run)
        if deleted:
            await self._scrub_wal()
        return deleted

    async def _scrub_wal(self) -> None:
        """Copy the WAL into the database and truncate it: ``secure_delete`` zeroes the
        freed pages in the database file, but the WAL still holds the old chunk frames."""
        conn = self._conn
        if conn is None:
            raise LocalError("blob store is not open")

        def job() -> None:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

        await asyncio.to_thread(self._locked, job)

    async def expire(self, now_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            ids = [
                bytes(r[0])
                for r in conn.execute(
                    "SELECT blob_id FROM blobs WHERE expires_at <= ?", (now_ms,)
                ).fetchall()
            ]
            for blob_id in ids:
                _delete(conn, blob_id)
            return len(ids)

        removed = await self._run(run)
        if removed:
            await self._scrub_wal()
        return removed

    async def used_bytes(self, owner: bytes, now_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            (used,) = conn.execute(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = ? AND expires_at > ?",
                (owner, now_ms),
            ).fetchone()
            return int(used)

        return await self._run(run, write=False)


def _delete(conn: sqlite3.Connection, blob_id: bytes) -> None:
    conn.execute("DELETE FROM blob_chunks WHERE blob_id = ?", (blob_id,))
    conn.execute("DELETE FROM blobs WHERE blob_id = ?", (blob_id,))
