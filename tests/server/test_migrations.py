"""Schema migrations: a database made by the previous release is upgraded in place.

The old database is built by applying only the chain up to version N-1 and inserting
rows with that version's SQL, as the previous release would have; then the current
store opens it, migrates it and must serve every row.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg

from samizdat.server.store.base import DepositItem, Store
from samizdat.server.store.migrations import MIGRATIONS
from samizdat.server.store.pg_migrations import PG_MIGRATIONS
from samizdat.server.store.postgres import PostgresStore, pg_migrate
from samizdat.server.store.sqlite import SqliteStore, migrate

from .helpers import NOW_MS, User
from .services import PG_DSN, drop_pg_schema

LATEST = MIGRATIONS[-1].version
PREVIOUS = MIGRATIONS[:-1]


def old_rows(user: User) -> list[tuple[str, tuple[object, ...]]]:
    """Rows as version N-1 stores them (placeholders are rewritten for PostgreSQL)."""
    dev = user.devices[0]
    signed = user.signed_list()
    keys = [dev.signed_key(f"k{i}") for i in range(3)]
    rows: list[tuple[str, tuple[object, ...]]] = [
        (
            "INSERT INTO users VALUES (?, ?, ?, ?)",
            (user.user_key, 1, signed.body, signed.signature),
        ),
        (
            "INSERT INTO devices (device_id, user_key, signing_key, identity_key, sealing_key)"
            " VALUES (?, ?, ?, ?, ?)",
            (
                dev.device_id,
                user.user_key,
                dev.keys.signing_key,
                dev.keys.identity_key,
                dev.keys.sealing_key,
            ),
        ),
        ("INSERT INTO tokens VALUES (?, ?)", (b"h" * 32, user.user_key)),
        ("INSERT INTO mailboxes VALUES (?, ?, ?)", (dev.device_id, 7, 2)),
    ]
    for k in keys:
        rows.append(
            (
                "INSERT INTO one_time_keys (device_id, key_id, key, signature) VALUES (?, ?, ?, ?)",
                (dev.device_id, k.key_id, k.key, k.signature),
            )
        )
    for seq in (6, 7):
        msg_id = seq.to_bytes(16, "big")
        rows.append(
            (
                "INSERT INTO mailbox_entries (device_id, seq, msg_id, body, received_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (dev.device_id, seq, msg_id, b"body%d" % seq, NOW_MS),
            )
        )
        rows.append(("INSERT INTO msg_ids VALUES (?, ?, ?)", (dev.device_id, msg_id, NOW_MS)))
    return rows


async def check_upgraded(store: Store, user: User) -> None:
    dev = user.devices[0]
    got = await store.get_device(dev.device_id)
    assert got is not None and got.user_key == user.user_key and got.keys == dev.keys
    assert await store.user_for_token(b"h" * 32) == user.user_key
    # Keys are still handed out in upload order (what migration 2's index serves).
    claimed = [await store.claim_key(dev.device_id) for _ in range(3)]
    assert [k.key_id for k in claimed if k is not None] == ["k0", "k1", "k2"]
    entries = await store.fetch(dev.device_id, 0, 10)
    assert [(e.seq, e.body) for e in entries] == [(6, b"body6"), (7, b"body7")]
    assert await store.mailbox_size(dev.device_id) == 2
    # Old msg_ids still deduplicate; the seq counter continues where it was.
    again = await store.deposit(
        [
            DepositItem(dev.device_id, (7).to_bytes(16, "big"), b"x"),
            DepositItem(dev.device_id, (8).to_bytes(16, "big"), b"y"),
        ],
        NOW_MS,
    )
    assert (again.stored, again.duplicates) == (1, 1)
    assert again.news == {dev.device_id: 8}
    # Migration 4: a fan-out's body is stored once, next to the old inline entries.
    other = secrets.token_bytes(16)
    body = b"fanned out"
    fan = await store.deposit(
        [DepositItem(d, (9).to_bytes(16, "big"), body) for d in (dev.device_id, other)], NOW_MS
    )
    assert fan.news == {dev.device_id: 9, other: 1}
    assert await store.ack(dev.device_id, 7, NOW_MS) == 2
    entries = await store.fetch(dev.device_id, 0, 10)
    assert [(e.seq, e.body) for e in entries] == [(8, b"y"), (9, body)]
    assert [e.body for e in await store.fetch(other, 0, 10)] == [body]


def test_chains_have_the_same_versions() -> None:
    assert [m.version for m in MIGRATIONS] == [m.version for m in PG_MIGRATIONS]
    assert [m.version for m in MIGRATIONS] == list(range(1, LATEST + 1))
    assert LATEST >= 2  # so that "the previous version" holds data


async def test_sqlite_upgrade_in_place(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    user = User.generate()
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        assert migrate(conn, PREVIOUS) == LATEST - 1
        for sql, args in old_rows(user):
            conn.execute(sql, args)
    finally:
        conn.close()

    store = SqliteStore(path)
    await store.open()
    try:
        await check_upgraded(store, user)
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        versions = [r[0] for r in conn.execute("SELECT version FROM schema_version ORDER BY 1")]
        assert versions == list(range(1, LATEST + 1))
        indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "one_time_keys_by_device" in indexes
        # The fan-out's body is one row, its two entries point at it.
        assert conn.execute("SELECT body, refs FROM bodies").fetchall() == [(b"fanned out", 2)]
        # Migration 5: entries in a rowid table, no longer an index b-tree (overflow pages).
        (table_sql,) = conn.execute(
            "SELECT sql FROM sqlite_master WHERE name = 'mailbox_entries'"
        ).fetchone()
        assert "WITHOUT ROWID" not in table_sql.upper()
        sharing = conn.execute(
            "SELECT device_id, seq FROM mailbox_entries WHERE body_id IS NOT NULL"
        ).fetchall()
    finally:
        conn.close()
    # The rebuilt table's trigger drops the body with the last entry that points at it.
    assert len(sharing) == 2
    store = SqliteStore(path)
    await store.open()
    try:
        for device_id, seq in sharing:
            assert await store.ack(device_id, seq, NOW_MS) >= 1
    finally:
        await store.close()
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM bodies").fetchone() == (0,)
    finally:
        conn.close()


def _pg(sql: str) -> str:
    parts = sql.split("?")
    return parts[0] + "".join(f"${i}{p}" for i, p in enumerate(parts[1:], 1))


async def _with_schema(schema: str, body: Callable[[asyncpg.Connection], Awaitable[None]]) -> None:
    conn = await asyncpg.connect(PG_DSN, server_settings={"search_path": schema})
    try:
        await body(conn)
    finally:
        await conn.close()


async def test_postgres_upgrade_in_place() -> None:
    schema = f"t_{secrets.token_hex(8)}"
    user = User.generate()

    async def build_old(conn: asyncpg.Connection) -> None:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        assert await pg_migrate(conn, PG_MIGRATIONS[:-1]) == LATEST - 1
        for sql, args in old_rows(user):
            await conn.execute(_pg(sql), *args)

    async def check_schema(conn: asyncpg.Connection) -> None:
        versions = await conn.fetch("SELECT version FROM schema_version ORDER BY 1")
        assert [r[0] for r in versions] == list(range(1, LATEST + 1))
        index = await conn.fetchval(
            "SELECT 1 FROM pg_indexes WHERE schemaname = $1 AND indexname = $2",
            schema,
            "one_time_keys_by_device",
        )
        assert index == 1
        bodies = await conn.fetch("SELECT body, refs FROM bodies")
        assert [(bytes(r[0]), r[1]) for r in bodies] == [(b"fanned out", 2)]
        # Migration 6: the old mailbox row got ``acked`` (0), which check_upgraded's ack
        # up to seq 7 raised.
        acked = await conn.fetchval(
            "SELECT acked FROM mailboxes WHERE device_id = $1", user.devices[0].device_id
        )
        assert acked == 7

    try:
        await _with_schema(schema, build_old)
        store = PostgresStore(PG_DSN, schema=schema, pool_size=2)
        await store.open()
        try:
            await check_upgraded(store, user)
        finally:
            await store.close()
        await _with_schema(schema, check_schema)
        # Opening again is a no-op: every migration is applied once.
        store = PostgresStore(PG_DSN, schema=schema, pool_size=1)
        await store.open()
        await store.close()
        await _with_schema(schema, check_schema)
    finally:
        await drop_pg_schema(schema)
