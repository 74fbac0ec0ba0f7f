"""Attachments against an in-process server: round trip, history, quota, tampering,
deletion, no plaintext in the blob store (SQLite) — the short checks."""

from __future__ import annotations

import os
import secrets
import sqlite3
from pathlib import Path

import asyncpg
import msgspec
import pytest

from samizdat.client import attachments
from samizdat.client.app import Client
from samizdat.client.connection import Connection
from samizdat.crypto.attachment import CHUNK_CIPHER, CHUNK_PLAIN, ciphertext_size
from samizdat.crypto.padding import padme
from samizdat.errors import DecryptionError, ErrorCode, LocalError, NotFound, ServerRefused
from samizdat.protocol import blobs as b
from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.transport import TransportOptions
from tests.censorship.conftest import World, collect
from tests.server.services import PG_DSN, drop_pg_schema

from .conftest import MARKER, PASSPHRASE, make_file, pair, sha256_of

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


#: The in-process server's blob quota per device (conftest.inproc).
QUOTA = 4 << 20
#: The largest file whose blob fits the quota: padded (Padmé) to a multiple of 64 KiB,
#: 4 MiB - 64 KiB, then 32 chunks of 16 tag bytes: 4,129,280 bytes of ciphertext.
FITS = (4 << 20) - (64 << 10)


def test_the_quota_figures() -> None:
    assert padme(FITS) == FITS and ciphertext_size(FITS) == QUOTA - 65_024
    assert ciphertext_size(padme(FITS + 1)) > QUOTA


async def test_the_quota_counts_the_padded_blob(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    _, bob = await pair(world, inproc.link, TransportOptions())
    make_file(tmp_path / "fits", FITS)
    await attachments.upload_file(bob, tmp_path / "fits")
    # 65,008 bytes would be exactly the 65,024 left unpadded (one chunk: + 16), but the
    # blob is its Padmé length, 65,536, + 16: refused, and never retried.
    make_file(tmp_path / "rest", 65_008)
    with pytest.raises(ServerRefused) as refused:
        await attachments.upload_file(bob, tmp_path / "rest")
    assert refused.value.code == ErrorCode.QUOTA


async def test_one_byte_past_the_largest_file_that_fits(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    _, bob = await pair(world, inproc.link, TransportOptions())
    make_file(tmp_path / "over", FITS + 1)  # padded to 4 MiB: its blob is 4 MiB + 512
    with pytest.raises(ServerRefused) as refused:
        await attachments.upload_file(bob, tmp_path / "over")
    assert refused.value.code == ErrorCode.QUOTA


async def test_sizes_in_one_padding_bucket_give_one_blob_size(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    sizes = (1_000_001, 1_015_808)  # one Padmé length: a multiple of 16 KiB past 1 MiB
    digests = [make_file(tmp_path / f"f{size}", size) for size in sizes]
    ids = [await attachments.send_file(bob, "alice", tmp_path / f"f{size}") for size in sizes]
    got = await collect(alice, 2, wait=20)
    assert [g.attachment.size for g in got if g.attachment] == list(sizes)
    db = sqlite3.connect(tmp_path / "srv" / "blobs.db")
    blob_sizes = [row[0] for row in db.execute("SELECT size FROM blobs")]
    db.close()
    assert blob_sizes == [ciphertext_size(1_015_808)] * 2
    # Each download is the file, byte for byte: the padding is dropped.
    for msg_id, size, digest in zip(ids, sizes, digests, strict=True):
        out = await attachments.download(alice, msg_id, tmp_path / f"got{size}")
        assert out.stat().st_size == size and sha256_of(out) == digest


async def test_an_unpadded_blob_from_an_older_sender_downloads(
    world: World, inproc: RunningServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    digest = make_file(tmp_path / "old", SIZE)
    # A sender before padding: the blob holds the file alone, the reference no ``padded``.
    monkeypatch.setattr(attachments, "padme", lambda length: length)
    att = await attachments.upload_file(bob, tmp_path / "old")
    msg_id = await bob.send("alice", "", attachment=msgspec.structs.replace(att, padded=0))
    await collect(alice, 1, wait=20)
    out = await attachments.download(alice, msg_id, tmp_path / "old.out")
    assert sha256_of(out) == digest


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
    assert not [n for n in os.listdir(tmp_path) if n.startswith("doc.out")]


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
        # Ciphertext: the file padded to its Padmé length, in four chunks, a tag each.
        assert len(stored) == padme(SIZE) + 4 * 16 > SIZE + 4 * 16
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


class _Crash(BaseException):
    """Stands for the process dying mid-upload: the store is left as a kill leaves it."""


async def test_an_interrupted_upload_continues_after_a_restart(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    digest = make_file(tmp_path / "big", 3 << 20)  # 24 chunks; the quota holds one such blob

    def crash(received: int, _total: int) -> None:
        if received >= 8 * CHUNK_CIPHER:
            raise _Crash

    with pytest.raises(_Crash):
        await attachments.upload_file(bob, tmp_path / "big", progress=crash)
    await bob.close()
    bob = world.add(await Client.open(world.tmp / "bob", PASSPHRASE, TransportOptions()))
    reports: list[int] = []
    att = await attachments.upload_file(
        bob, tmp_path / "big", progress=lambda received, _: reports.append(received)
    )
    # The chunks the server held were not sent again (a fresh upload would also have
    # needed a second blob's worth of quota, which this device does not have).
    assert reports[0] > 8 * CHUNK_CIPHER
    assert len(reports) == 24 - reports[0] // CHUNK_CIPHER + 1
    db = sqlite3.connect(tmp_path / "srv" / "blobs.db")
    assert db.execute("SELECT blob_id, received = size FROM blobs").fetchall() == [(att.blob_id, 1)]
    db.close()
    msg_id = await bob.send("alice", "", attachment=att)
    await collect(alice, 1, wait=20)
    assert sha256_of(await attachments.download(alice, msg_id, tmp_path / "got")) == digest
    # Finished: nothing is kept to resume (the key is in the message now, not beside it).
    assert bob._store.values("upload") == []  # noqa: SLF001


async def test_an_interrupted_download_continues(
    world: World, inproc: RunningServer, tmp_path: Path
) -> None:
    alice, bob = await pair(world, inproc.link, TransportOptions())
    digest = make_file(tmp_path / "big", 3 << 20)
    msg_id = await attachments.send_file(bob, "alice", tmp_path / "big")
    await collect(alice, 1, wait=20)

    def crash(written: int, _total: int) -> None:
        if written >= 8 * CHUNK_PLAIN:
            raise _Crash

    with pytest.raises(_Crash):
        await attachments.download(alice, msg_id, tmp_path / "got", progress=crash)
    [part] = [tmp_path / n for n in os.listdir(tmp_path) if n.endswith(".part")]
    # A half-written chunk at the end is cut off and fetched again.
    with part.open("ab") as fh:
        fh.write(b"half a chunk")
    reports: list[int] = []
    out = await attachments.download(
        alice, msg_id, tmp_path / "got", progress=lambda written, _: reports.append(written)
    )
    assert sha256_of(out) == digest and not part.exists()
    assert reports[0] == 9 * CHUNK_PLAIN and len(reports) == 24 - 8
