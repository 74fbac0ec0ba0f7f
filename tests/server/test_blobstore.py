"""Blob store conformance suite: SQLite and PostgreSQL keep the same semantics
(server/blobstore/base.py), like the mailbox store suite (conftest STORE_KINDS)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from samizdat.errors import ErrorCode, ProtocolError
from samizdat.server.blobstore.base import BLOB_CHUNK, BlobStore
from samizdat.server.blobstore.postgres import PostgresBlobStore
from samizdat.server.blobstore.sqlite import SqliteBlobStore

from .conftest import STORE_KINDS
from .services import PG_DSN, drop_pg_schema

NOW = 1_800_000_000_000
HOUR = 3_600_000
QUOTA = 10 * BLOB_CHUNK
BlobFactory = Callable[[], Awaitable[BlobStore]]


@pytest.fixture(params=STORE_KINDS)
async def make_blobs(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BlobFactory]:
    opened: list[BlobStore] = []
    schema = f"t_{secrets.token_hex(8)}"

    async def factory() -> BlobStore:
        store: BlobStore
        if request.param == "sqlite":
            store = SqliteBlobStore(tmp_path / "blobs.db")
        else:
            store = PostgresBlobStore(PG_DSN, schema=schema)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if request.param == "postgresql" and opened:
        await drop_pg_schema(schema)


def chunk(n: int, size: int = BLOB_CHUNK) -> bytes:
    return bytes([n]) * size


async def upload(store: BlobStore, owner: bytes, blob_id: bytes, parts: list[bytes]) -> None:
    size = sum(len(p) for p in parts)
    await store.create(owner, blob_id, size, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    offset = 0
    for part in parts:
        await store.append(owner, blob_id, offset, part, NOW)
        offset += len(part)


async def test_upload_resume_read_across_reopen(make_blobs: BlobFactory) -> None:
    store = await make_blobs()
    owner, blob = os.urandom(16), os.urandom(16)
    size = 2 * BLOB_CHUNK + 10
    info = await store.create(owner, blob, size, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert (info.size, info.received, info.expires_at) == (size, 0, NOW + HOUR)
    assert (await store.append(owner, blob, 0, chunk(1), NOW)).received == BLOB_CHUNK
    # Not complete: nothing is readable yet.
    assert await store.read(blob, b"h" * 32, 0, NOW) is None
    await store.close()
    store = await make_blobs()
    # A resuming client asks again with the same fields: it learns what the server holds.
    again = await store.create(owner, blob, size, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert again.received == BLOB_CHUNK and not again.complete
    # A retry of the chunk already held changes nothing; a gap is refused.
    assert (await store.append(owner, blob, 0, chunk(1), NOW)).received == BLOB_CHUNK
    with pytest.raises(ProtocolError) as gap:
        await store.append(owner, blob, 2 * BLOB_CHUNK, chunk(3, 10), NOW)
    assert gap.value.code == ErrorCode.CONFLICT
    await store.append(owner, blob, BLOB_CHUNK, chunk(2), NOW)
    done = await store.append(owner, blob, 2 * BLOB_CHUNK, chunk(3, 10), NOW)
    assert done.complete
    got = [await store.read(blob, b"h" * 32, i * BLOB_CHUNK, NOW) for i in range(3)]
    assert [g.data if g else None for g in got] == [chunk(1), chunk(2), chunk(3, 10)]
    assert got[0] is not None and got[0].info.size == size
    assert await store.read(blob, b"x" * 32, 0, NOW) is None  # wrong secret
    assert await store.read(blob, b"h" * 32, 3 * BLOB_CHUNK, NOW) is None  # past the end


async def test_shape_conflicts_and_owners(make_blobs: BlobFactory) -> None:
    store = await make_blobs()
    owner, other, blob = os.urandom(16), os.urandom(16), os.urandom(16)
    await store.create(owner, blob, 2 * BLOB_CHUNK, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    for offset, data in ((0, chunk(1, 10)), (5, chunk(1)), (BLOB_CHUNK, chunk(1, 2 * BLOB_CHUNK))):
        with pytest.raises(ProtocolError) as bad:
            await store.append(owner, blob, offset, data, NOW)
        assert bad.value.code == ErrorCode.BAD_FRAME
    with pytest.raises(ProtocolError) as taken:
        await store.create(other, blob, 2 * BLOB_CHUNK, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert taken.value.code == ErrorCode.CONFLICT
    with pytest.raises(ProtocolError) as changed:
        await store.create(owner, blob, BLOB_CHUNK, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert changed.value.code == ErrorCode.CONFLICT
    with pytest.raises(ProtocolError) as foreign:
        await store.append(other, blob, 0, chunk(1), NOW)
    assert foreign.value.code == ErrorCode.NOT_FOUND
    assert not await store.delete(other, blob)
    assert await store.delete(owner, blob)
    assert not await store.delete(owner, blob)


async def test_quota_counts_declared_sizes_of_live_blobs(make_blobs: BlobFactory) -> None:
    store = await make_blobs()
    owner = os.urandom(16)
    first = os.urandom(16)
    await store.create(owner, first, QUOTA - 100, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    await store.create(os.urandom(16), os.urandom(16), QUOTA, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    await store.create(owner, os.urandom(16), 100, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert await store.used_bytes(owner, NOW) == QUOTA
    with pytest.raises(ProtocolError) as over:
        await store.create(owner, os.urandom(16), 1, b"h" * 32, NOW + HOUR, QUOTA, NOW)
    assert over.value.code == ErrorCode.QUOTA
    assert await store.delete(owner, first)
    await store.create(owner, os.urandom(16), 1, b"h" * 32, NOW + HOUR, QUOTA, NOW)


async def test_expiry(make_blobs: BlobFactory) -> None:
    store = await make_blobs()
    owner, short, long = os.urandom(16), os.urandom(16), os.urandom(16)
    await store.create(owner, short, 10, b"h" * 32, NOW + 10, QUOTA, NOW)
    await store.append(owner, short, 0, chunk(1, 10), NOW)
    await upload(store, owner, long, [chunk(2, 10)])
    assert await store.read(short, b"h" * 32, 0, NOW) is not None
    # Past its expiry a blob is gone for reads, writes and the quota, before any sweep.
    assert await store.read(short, b"h" * 32, 0, NOW + 10) is None
    assert await store.used_bytes(owner, NOW + 10) == 10
    with pytest.raises(ProtocolError):
        await store.append(owner, short, 0, chunk(1, 10), NOW + 10)
    assert await store.expire(NOW + 10) == 1
    assert await store.expire(NOW + 10) == 0
    assert await store.read(long, b"h" * 32, 0, NOW + 10) is not None
    # The id of an expired blob may be taken again.
    await store.create(owner, short, 10, b"h" * 32, NOW + HOUR, QUOTA, NOW + 20)
