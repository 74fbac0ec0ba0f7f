"""Attachments against an in-process server: round trip, history, quota, tampering,
deletion, no plaintext in the blob store (SQLite) — the short checks."""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from samizdat.client import attachments
from samizdat.client.connection import Connection
from samizdat.errors import DecryptionError, ErrorCode, LocalError, NotFound, ServerRefused
from samizdat.protocol import blobs as b
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, collect
from tests.server.services import PG_DSN, drop_pg_schema

from .conftest import MARKER, make_file, pair, sha256_of

SIZE = 3 * 128 * 1024 + 1000  # four chunks, the last one short


async def test_send_history_download(
    world: World, inproc: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    digest = make_file(tmp_path / "photo.jpg", SIZE)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "photo.jpg", "look")
    [got] = await collect(alice, 1, wait=20)
    assert (got.id, got.text) == (msg_id, "look")
    assert got.attachment is not None
    assert (got.attachment.name, got.attachment.size) == ("photo.jpg", SIZE)
    assert got.attachment.media_type == "image/jpeg"
    for who, client in (("bob", alice), ("alice", bob)):
        [item] = [i for i in client.history(who) if i.id == msg_id]
        assert item.attachment is not None and item.attachment.size == SIZE
    out = await attachments.download(alice, msg_id, tmp_path / "got.jpg")
    assert sha256_of(out) == digest
    # The uploader can fetch its own file too; no .part file is left behind.
    again = await attachments.download(bob, msg_id, tmp_path / "again.jpg")
    assert sha256_of(again) == digest
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".part")]
    with pytest.raises(NotFound):
        await attachments.download(alice, "00" * 16, tmp_path / "none")
    # Without a path: the file's own name in the current folder, never overwritten.
    (tmp_path / "dl").mkdir()
    monkeypatch.chdir(tmp_path / "dl")
    assert await attachments.download(alice, msg_id[:8]) == tmp_path / "dl" / "photo.jpg"
    with pytest.raises(LocalError):
        await attachments.download(alice, msg_id)
    # Nothing of the plaintext is stored by the server: scan every file it wrote.
    for path in (tmp_path / "srv").rglob("*"):
        if path.is_file():
            assert MARKER not in path.read_bytes(), path.name


async def test_empty_file(world: World, inproc: RunningServer, tmp_path: Path) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    (tmp_path / "empty").write_bytes(b"")
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "empty")
    await collect(alice, 1, wait=20)
    out = await attachments.download(alice, msg_id, tmp_path / "empty.out")
    assert out.read_bytes() == b""


async def test_quota_plus_one_is_refused(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    _, bob = await pair(world, inproc.link, TransportOptions())
    # The quota counts ciphertext: 4 MiB of it is 32 full chunks of 128 KiB + 16 bytes.
    quota = 4 << 20
    fits = quota - 32 * 16  # plaintext whose ciphertext is exactly the quota
    make_file(tmp_path / "fits", fits)
    await attachments.upload_file(bob, tmp_path / "fits")
    make_file(tmp_path / "one", 0)
    with pytest.raises(ServerRefused) as refused:
        # Another blob of 16 bytes (an empty file) is quota + 16: refused, never retried.
        await attachments.upload_file(bob, tmp_path / "one")
    assert refused.value.code == ErrorCode.QUOTA


async def test_quota_exactly_plus_one_byte(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    _, bob = await pair(world, inproc.link, TransportOptions())
    quota = 4 << 20
    make_file(tmp_path / "over", quota - 32 * 16 + 1)  # one plaintext byte more than fits
    with pytest.raises(ServerRefused) as refused:
        await attachments.upload_file(bob, tmp_path / "over")
    assert refused.value.code == ErrorCode.QUOTA


async def test_tampered_chunk_is_rejected(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    make_file(tmp_path / "doc", SIZE)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "doc")
    await collect(alice, 1, wait=20)
    # The operator (or a thief) flips one byte of the stored ciphertext.
    db = sqlite3.connect(tmp_path / "srv" / "blobs.db")
    with db:
        (data,) = db.execute("SELECT data FROM blob_chunks WHERE idx = 2").fetchone()
        flipped = bytes([data[0] ^ 1]) + data[1:]
        db.execute("UPDATE blob_chunks SET data = ? WHERE idx = 2", (flipped,))
    db.close()
    with pytest.raises(DecryptionError):
        await attachments.download(alice, msg_id, tmp_path / "doc.out")
    assert not (tmp_path / "doc.out").exists()
    assert not (tmp_path / "doc.out.part").exists()


async def test_uploader_deletes_and_ttl(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    make_file(tmp_path / "f", 1000)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "f")
    await collect(alice, 1, wait=20)
    att = attachments.attachment_of(bob, msg_id)
    assert att is not None
    db = sqlite3.connect(tmp_path / "srv" / "blobs.db")
    (stored,) = db.execute("SELECT data FROM blob_chunks").fetchone()
    db.close()
    await attachments.delete_blob(bob, att)
    # Gone from the disk too: neither the database file nor its WAL keeps the ciphertext.
    for path in (tmp_path / "srv").rglob("blobs.db*"):
        assert stored[:64] not in path.read_bytes(), path.name
    await attachments.delete_blob(bob, att)  # again: still fine
    with pytest.raises(ServerRefused) as gone:
        await attachments.download(alice, msg_id, tmp_path / "f.out")
    assert gone.value.code == ErrorCode.NOT_FOUND
    short = await attachments.upload_file(bob, tmp_path / "f", ttl_ms=60_000)
    assert 0 < short.expires_at - att.expires_at + 30 * 86_400_000 <= 60_000 + 5_000


async def test_no_plaintext_in_postgresql(world: World, tmp_path: Path) -> None:
    schema = f"t_{secrets.token_hex(8)}"
    conn = await asyncpg.connect(PG_DSN)
    await conn.execute(f'CREATE SCHEMA "{schema}"')
    running = await start(
        ServerConfig(
            data_dir=tmp_path / "srv", print_link=False, store_url=f"{PG_DSN}?search_path={schema}"
        )
    )
    try:
        alice, bob = await pair(world, running.link, TransportOptions())
        digest = make_file(tmp_path / "pg.bin", SIZE)
        msg_id = await attachments.send_file(bob, "alice", tmp_path / "pg.bin")
        await collect(alice, 1, wait=20)
        assert sha256_of(await attachments.download(alice, msg_id, tmp_path / "o")) == digest
        rows = await conn.fetch(f'SELECT data FROM "{schema}".blob_chunks')
        stored = b"".join(bytes(r[0]) for r in rows)
        assert len(stored) == SIZE + 4 * 16  # ciphertext: four chunks, a tag each
        assert MARKER not in stored
        dump = await conn.fetch(f'SELECT b::text FROM "{schema}".blobs b')
        assert all(MARKER.hex() not in r[0] for r in dump)
        assert not list((tmp_path / "srv").glob("blobs.db*"))  # nothing local on PG
    finally:
        await running.stop()
        await conn.close()
        await drop_pg_schema(schema)


async def test_anonymous_connections_only_read(inproc: RunningServer) -> None:
    conn = await Connection.open(inproc.descriptor, inproc.identity.server_key)
    try:
        blob_id = bytes(16)
        for frame in (
            b.BlobOpen(rid=0, blob_id=blob_id, size=10, read_hash=bytes(32)),
            b.BlobWrite(rid=0, blob_id=blob_id, offset=0, data=b"x"),
            b.BlobDelete(rid=0, blob_id=blob_id),
        ):
            with pytest.raises(ServerRefused) as refused:
                await conn.call_any(frame)
            assert refused.value.code == ErrorCode.NOT_AUTHENTICATED
        with pytest.raises(ServerRefused) as missing:
            await conn.call_any(b.BlobRead(rid=0, blob_id=blob_id, secret=bytes(32), offset=0))
        assert missing.value.code == ErrorCode.NOT_FOUND
        with pytest.raises(ServerRefused) as unaligned:
            await conn.call_any(b.BlobRead(rid=0, blob_id=blob_id, secret=bytes(32), offset=1))
        assert unaligned.value.code == ErrorCode.BAD_FRAME
    finally:
        await conn.close()


async def test_a_hostile_name_stays_in_the_folder(
    world: World, inproc: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    make_file(tmp_path / "x", 10)
    att = await attachments.upload_file(bob, tmp_path / "x", name="../../.evil\x00\n.sh")
    msg_id = await bob.send("alice", "", attachment=att)
    await collect(alice, 1, wait=20)
    (tmp_path / "dl").mkdir()
    monkeypatch.chdir(tmp_path / "dl")
    out = await attachments.download(alice, msg_id)
    assert out.parent == tmp_path / "dl" and out.name == "evil__.sh"
