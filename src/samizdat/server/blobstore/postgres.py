"""Blobs in PostgreSQL, so any node of a cluster serves any blob (DESIGN §7).

Same tables as the SQLite blob store, in the store's database (and schema), with their
own version table ``blob_schema_version`` (``migrations.py``). Each operation is one
transaction; an append locks its blob row (``FOR UPDATE``), so two nodes cannot both
store the chunk at one offset, and a create takes a transaction-scoped advisory lock on
its owner, so concurrent creates cannot overrun the quota together.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import asyncpg

from samizdat.errors import ErrorCode, LocalError, ProtocolError
from samizdat.server.blobstore.base import BLOB_CHUNK, BlobChunk, BlobInfo, check_shape
from samizdat.server.blobstore.migrations import PG_BLOB_MIGRATIONS
from samizdat.server.store.postgres import open_pool, pg_migrate

__all__ = ["PostgresBlobStore"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
Conn = Any  # asyncpg.Connection (asyncpg ships no types)
_MIGRATION_LOCK: Final = 0x53414D42  # "SAMB"


async def _migrate(conn: Conn) -> int:
    return await pg_migrate(
        conn, PG_BLOB_MIGRATIONS, table="blob_schema_version", lock=_MIGRATION_LOCK
    )


class PostgresBlobStore:
    """:class:`~samizdat.server.blobstore.base.BlobStore` on a PostgreSQL database.

    Args:
        dsn: a ``postgresql://`` URL (never logged).
        schema: as for ``PostgresStore``: tables live in this schema.
    """

    def __init__(self, dsn: str, *, schema: str | None = None, pool_size: int = 4) -> None:
        self._dsn = dsn
        self._schema = schema
        self._pool_size = pool_size
        self._pool: Any = None

    def __repr__(self) -> str:
        return "PostgresBlobStore(<db>)"

    async def open(self) -> None:
        if self._pool is not None:
            raise LocalError("blob store already open")
        self._pool = await open_pool(self._dsn, self._schema, self._pool_size, _migrate)

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _tx(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        if self._pool is None:
            raise LocalError("blob store is not open")
        try:
            async with self._pool.acquire() as conn, conn.transaction():
                return await fn(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _log.error("blob store transaction failed: %s", type(exc).__name__)
            raise LocalError("blob store transaction failed") from None

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
        async def run(conn: Conn) -> BlobInfo:
            await conn.execute(
                "SELECT pg_advisory_xact_lock($1)", int.from_bytes(owner[:8], "big", signed=True)
            )
            row = await conn.fetchrow(
                "SELECT owner, size, read_hash, received, expires_at FROM blobs"
                " WHERE blob_id = $1 FOR UPDATE",
                blob_id,
            )
            if row is not None and row[4] > now_ms:
                if (bytes(row[0]), row[1], bytes(row[2])) != (owner, size, read_hash):
                    raise ProtocolError(ErrorCode.CONFLICT, "blob id taken")
                return BlobInfo(size=row[1], received=row[3], expires_at=row[4])
            if row is not None:
                await _delete(conn, blob_id)
            used = await conn.fetchval(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = $1 AND expires_at > $2",
                owner,
                now_ms,
            )
            if int(used) + size > quota_bytes:
                raise ProtocolError(ErrorCode.QUOTA, "blob quota of this device exceeded")
            await conn.execute(
                "INSERT INTO blobs (blob_id, owner, size, received, read_hash, expires_at,"
                " created_at) VALUES ($1, $2, $3, 0, $4, $5, $6)",
                blob_id,
                owner,
                size,
                read_hash,
                expires_at,
                now_ms,
            )
            return BlobInfo(size=size, received=0, expires_at=expires_at)

        return await self._tx(run)

    async def append(
        self, owner: bytes, blob_id: bytes, offset: int, data: bytes, now_ms: int
    ) -> BlobInfo:
        async def run(conn: Conn) -> BlobInfo:
            row = await conn.fetchrow(
                "SELECT size, received, expires_at FROM blobs"
                " WHERE blob_id = $1 AND owner = $2 AND expires_at > $3 FOR UPDATE",
                blob_id,
                owner,
                now_ms,
            )
            if row is None:
                raise ProtocolError(ErrorCode.NOT_FOUND, "no such blob")
            size, received, expires_at = int(row[0]), int(row[1]), int(row[2])
            check_shape(size, offset, len(data))
            if offset + len(data) <= received:
                return BlobInfo(size=size, received=received, expires_at=expires_at)
            if offset != received:
                raise ProtocolError(ErrorCode.CONFLICT, f"expected offset {received}")
            await conn.execute(
                "INSERT INTO blob_chunks (blob_id, idx, data) VALUES ($1, $2, $3)",
                blob_id,
                offset // BLOB_CHUNK,
                data,
            )
            received += len(data)
            await conn.execute(
                "UPDATE blobs SET received = $2 WHERE blob_id = $1", blob_id, received
            )
            return BlobInfo(size=size, received=received, expires_at=expires_at)

        return await self._tx(run)

    async def read(
        self, blob_id: bytes, read_hash: bytes, offset: int, now_ms: int
    ) -> BlobChunk | None:
        async def run(conn: Conn) -> BlobChunk | None:
            row = await conn.fetchrow(
                "SELECT b.size, b.received, b.expires_at, b.read_hash, c.data"
                " FROM blobs b JOIN blob_chunks c ON c.blob_id = b.blob_id"
                " WHERE b.blob_id = $1 AND c.idx = $2 AND b.expires_at > $3"
                " AND b.received = b.size",
                blob_id,
                offset // BLOB_CHUNK,
                now_ms,
            )
            if row is None or bytes(row[3]) != read_hash:
                return None
            info = BlobInfo(size=int(row[0]), received=int(row[1]), expires_at=int(row[2]))
            return BlobChunk(info, bytes(row[4]))

        return await self._tx(run)

    async def delete(self, owner: bytes, blob_id: bytes) -> bool:
        async def run(conn: Conn) -> bool:
            found = await conn.fetchval(
                "SELECT 1 FROM blobs WHERE blob_id = $1 AND owner = $2 FOR UPDATE",
                blob_id,
                owner,
            )
            if found is None:
                return False
            await _delete(conn, blob_id)
            return True

        return await self._tx(run)

    async def expire(self, now_ms: int) -> int:
        async def run(conn: Conn) -> int:
            rows = await conn.fetch(
                "DELETE FROM blobs WHERE expires_at <= $1 RETURNING blob_id", now_ms
            )
            ids = [bytes(r[0]) for r in rows]
            if ids:
                await conn.execute("DELETE FROM blob_chunks WHERE blob_id = ANY($1)", ids)
            return len(ids)

        return await self._tx(run)

    async def used_bytes(self, owner: bytes, now_ms: int) -> int:
        async def run(conn: Conn) -> int:
            used = await conn.fetchval(
                "SELECT coalesce(sum(size), 0) FROM blobs WHERE owner = $1 AND expires_at > $2",
                owner,
                now_ms,
            )
            return int(used)

        return await self._tx(run)


async def _delete(conn: Conn, blob_id: bytes) -> None:
    await conn.execute("DELETE FROM blob_chunks WHERE blob_id = $1", blob_id)
    await conn.execute("DELETE FROM blobs WHERE blob_id = $1", blob_id)
