"""The scale-out store: PostgreSQL through asyncpg, shared by any number of nodes (DESIGN §7).

Same semantics as :mod:`samizdat.server.store.sqlite` (the conformance suite runs on
both). Differences that come from several nodes writing at once:

* Each operation is one transaction on a pooled connection. ``synchronous_commit=on``
  is forced per connection, so a commit (and thus ``DepositOk``) is on disk; PostgreSQL
  batches concurrent commits into one WAL flush by itself (group commit).
* The ``mailboxes`` row is the per-mailbox lock: a deposit increments ``last_seq`` with
  ``INSERT .. ON CONFLICT DO UPDATE .. RETURNING``, so concurrent deposits on any node
  get distinct, increasing seqs. Items are locked in device order to avoid deadlocks.
* ``claim_key`` uses ``FOR UPDATE SKIP LOCKED`` so concurrent claims never hand out the
  same key; per-user and per-device limits take a transaction-scoped advisory lock.
* A deadlock or serialization failure is retried a few times; any other database or
  connection failure is a :class:`~samizdat.errors.LocalError` (the client sees
  ``internal`` and retries), never a silent loss.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Final, TypeVar

import asyncpg

from samizdat.errors import ErrorCode, LocalError, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.keys import DeviceKeys, SignedDeviceList, SignedKey
from samizdat.server.store.base import (
    MSG_ID_RETENTION_MS,
    DepositItem,
    DepositResult,
    KeyCounts,
    MailboxEntry,
    RegisteredDevice,
)
from samizdat.server.store.migrations import Migration
from samizdat.server.store.pg_migrations import PG_MIGRATIONS

__all__ = ["PostgresStore", "open_pool", "pg_migrate"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
_RETRIES: Final = 5
#: Advisory lock key that serialises schema migrations of nodes starting together.
_MIGRATION_LOCK: Final = 0x53414D49  # "SAMI"
_SCHEMA_NAME: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_RETRYABLE: Final = (
    asyncpg.exceptions.DeadlockDetectedError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.UniqueViolationError,
)

Conn = Any  # asyncpg.Connection (asyncpg ships no types)

#: One envelope of a deposit: $1 device, $2 msg_id, $3 now, $4 body, $5 quota, $6 expiry.
#: Returns (fresh, seq, size); a duplicate touches nothing, a full mailbox inserts no
#: entry and the caller rolls the transaction back.
_DEPOSIT_ONE: Final = """
WITH fresh AS (
    INSERT INTO msg_ids VALUES ($1, $2, $3) ON CONFLICT DO NOTHING RETURNING device_id
), box AS (
    INSERT INTO mailboxes SELECT device_id, 1, 1 FROM fresh
    ON CONFLICT (device_id) DO UPDATE
    SET last_seq = mailboxes.last_seq + 1, size = mailboxes.size + 1
    RETURNING last_seq, size
), entry AS (
    INSERT INTO mailbox_entries (device_id, seq, msg_id, body, received_at, expires_at)
    SELECT $1, last_seq, $2, $4, $3, $6::BIGINT FROM box WHERE size <= $5
    RETURNING seq
)
SELECT EXISTS (SELECT 1 FROM fresh), (SELECT last_seq FROM box), (SELECT size FROM box)
"""


async def pg_migrate(
    conn: Conn,
    migrations: Sequence[Migration] = PG_MIGRATIONS,
    *,
    table: str = "schema_version",
    lock: int = _MIGRATION_LOCK,
) -> int:
    """Apply the migrations newer than the database's version; returns the version now.

    Holds an advisory lock, so nodes that start at the same time migrate once.
    Tests pass a prefix of the chain to build a database as an older release made it.
    ``table`` and ``lock`` name another chain's version table (the blob store's).
    """
    await conn.execute("SELECT pg_advisory_lock($1)", lock)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            " version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)"
        )
        current = int(await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {table}"))
        for migration in migrations:
            if migration.version <= current:
                continue
            async with conn.transaction():
                for statement in migration.statements:
                    await conn.execute(statement)
                await conn.execute(
                    f"INSERT INTO {table} VALUES ($1, $2)",
                    migration.version,
                    int(time.time() * 1000),
                )
            current = migration.version
            _log.info("schema migrated to version %d (%s)", current, table)
        return current
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", lock)


async def open_pool(
    dsn: str,
    schema: str | None,
    pool_size: int,
    migrate: Callable[[Conn], Awaitable[int]],
    **pool_options: Any,
) -> Any:
    """Migrate (in ``schema``, created if missing) on one connection, then open the pool.

    Every connection commits synchronously (DESIGN §5: acknowledged means durable).
    """
    if schema is not None and not _SCHEMA_NAME.fullmatch(schema):
        raise LocalError("schema name must be a lowercase SQL identifier")
    settings = {"synchronous_commit": "on"}
    if schema is not None:
        settings["search_path"] = schema
    try:
        first = await asyncpg.connect(dsn, server_settings=settings)
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise LocalError(f"cannot connect to PostgreSQL: {type(exc).__name__}") from exc
    try:
        if schema is not None:
            await first.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        await migrate(first)
    finally:
        await first.close()
    return await asyncpg.create_pool(
        dsn, min_size=1, max_size=pool_size, server_settings=settings, **pool_options
    )


class PostgresStore:
    """:class:`~samizdat.server.store.base.Store` on a PostgreSQL database.

    Args:
        dsn: a ``postgresql://`` URL (never logged: it may hold a password).
        schema: tables live in this schema (created if missing) instead of the
            connection's default ``search_path``; tests give each run its own.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str | None = None,
        pool_size: int = 10,
        max_mailbox_entries: int = limits.MAX_MAILBOX_ENTRIES,
        max_stored_one_time_keys: int = limits.MAX_STORED_ONE_TIME_KEYS,
        max_tokens_per_user: int = limits.MAX_TOKENS_PER_USER,
    ) -> None:
        self._dsn = dsn
        self._schema = schema
        self._pool_size = pool_size
        self._max_mailbox = max_mailbox_entries
        self._max_otks = max_stored_one_time_keys
        self._max_tokens = max_tokens_per_user
        self._pool: Any = None

    def __repr__(self) -> str:
        return "PostgresStore(<db>)"

    async def open(self) -> None:
        if self._pool is not None:
            raise LocalError("store already open")
        self._pool = await open_pool(
            self._dsn,
            self._schema,
            self._pool_size,
            pg_migrate,
            # The default reset costs a round trip per operation; we never leave session
            # state behind (no SET, LISTEN, cursors; advisory locks are transaction-scoped).
            reset=_no_reset,
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def _tx(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run ``fn`` in one transaction; retry on deadlocks and lost races."""
        if self._pool is None:
            raise LocalError("store is not open")
        for attempt in range(_RETRIES):
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    return await fn(conn)
            except _RETRYABLE:
                if attempt == _RETRIES - 1:
                    _log.error("store transaction kept conflicting")
                    raise LocalError("store transaction failed") from None
                await asyncio.sleep(0.001 * (attempt + 1))
            except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
                _log.error("store transaction failed: %s", type(exc).__name__)
                raise LocalError("store transaction failed") from None
        raise LocalError("unreachable")  # pragma: no cover

    async def _read(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run a read of one statement (or of independent ones) without a transaction:
        BEGIN and COMMIT would double its round trips."""
        if self._pool is None:
            raise LocalError("store is not open")
        try:
            async with self._pool.acquire() as conn:
                return await fn(conn)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            _log.error("store read failed: %s", type(exc).__name__)
            raise LocalError("store read failed") from None

    async def _lock(self, conn: Conn, key: bytes) -> None:
        """A transaction-scoped lock on one user or device, for count-then-insert limits."""
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(encode($1, 'hex'), 0))", key
        )

    # -- devices and keys ---------------------------------------------------------------

    async def register_device(
        self,
        user_key: bytes,
        device_list: SignedDeviceList,
        device_list_version: int,
        listed: Sequence[bytes],
        device: DeviceKeys,
    ) -> None:
        listed_set = set(listed)

        async def run(conn: Conn) -> None:
            inserted = await conn.fetchval(
                "INSERT INTO users VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING RETURNING 1",
                user_key,
                device_list_version,
                device_list.body,
                device_list.signature,
            )
            if inserted is None:
                row = await conn.fetchrow(
                    "SELECT list_version, list_body FROM users WHERE user_key = $1 FOR UPDATE",
                    user_key,
                )
                if device_list_version > row[0]:
                    await conn.execute(
                        "UPDATE users SET list_version = $1, list_body = $2, list_signature = $3"
                        " WHERE user_key = $4",
                        device_list_version,
                        device_list.body,
                        device_list.signature,
                        user_key,
                    )
                    await _forget_unlisted(conn, user_key, listed_set)
                elif device_list_version < row[0] or device_list.body != row[1]:
                    raise ProtocolError(ErrorCode.CONFLICT, "a newer device list is registered")
            owner = await conn.fetchval(
                "SELECT user_key FROM devices WHERE device_id = $1 FOR UPDATE", device.device_id
            )
            if owner is not None and owner != user_key:
                raise ProtocolError(ErrorCode.CONFLICT, "device belongs to another user")
            if owner is None:
                # A concurrent registration of the same device is a UniqueViolation: retried.
                await conn.execute(
                    "INSERT INTO devices (device_id, user_key, signing_key, identity_key,"
                    " sealing_key) VALUES ($1, $2, $3, $4, $5)",
                    device.device_id,
                    user_key,
                    device.signing_key,
                    device.identity_key,
                    device.sealing_key,
                )
            else:
                await conn.execute(
                    "UPDATE devices SET identity_key = $1, sealing_key = $2 WHERE device_id = $3",
                    device.identity_key,
                    device.sealing_key,
                    device.device_id,
                )

        await self._tx(run)

    async def get_device(self, device_id: bytes) -> RegisteredDevice | None:
        async def run(conn: Conn) -> RegisteredDevice | None:
            row = await conn.fetchrow(
                f"SELECT {RegisteredDevice.COLUMNS}"
                " FROM devices d JOIN users u ON u.user_key = d.user_key"
                " WHERE d.device_id = $1",
                device_id,
            )
            if row is None:
                return None
            return RegisteredDevice.from_row(device_id, row)

        return await self._read(run)

    async def user_devices(self, user_key: bytes) -> frozenset[bytes]:
        async def run(conn: Conn) -> frozenset[bytes]:
            rows = await conn.fetch("SELECT device_id FROM devices WHERE user_key = $1", user_key)
            return frozenset(bytes(row[0]) for row in rows)

        return await self._read(run)

    async def add_one_time_keys(
        self, device_id: bytes, keys: Sequence[SignedKey], fallback: SignedKey | None
    ) -> KeyCounts:
        max_otks = self._max_otks

        async def run(conn: Conn) -> KeyCounts:
            await self._lock(conn, device_id)
            await conn.executemany(
                "INSERT INTO one_time_keys (device_id, key_id, key, signature)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
                [(device_id, k.key_id, k.key, k.signature) for k in keys],
            )
            if fallback is not None:
                await conn.execute(
                    "UPDATE devices SET fallback_key_id = $1, fallback_key = $2,"
                    " fallback_signature = $3 WHERE device_id = $4",
                    fallback.key_id,
                    fallback.key,
                    fallback.signature,
                    device_id,
                )
            counts = await _key_counts(conn, device_id)
            if counts.one_time_keys > max_otks:
                raise ProtocolError(ErrorCode.TOO_MANY_KEYS, "too many one-time keys stored")
            return counts

        return await self._tx(run)

    async def claim_key(self, device_id: bytes, one_time: bool = True) -> SignedKey | None:
        async def run(conn: Conn) -> SignedKey | None:
            # SKIP LOCKED: a concurrent claim takes the next key instead of waiting for
            # (and then losing) the one another transaction is deleting.
            row = None
            if one_time:
                row = await conn.fetchrow(
                    "DELETE FROM one_time_keys WHERE id = (SELECT id FROM one_time_keys"
                    " WHERE device_id = $1 ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)"
                    " RETURNING key_id, key, signature",
                    device_id,
                )
            if row is not None:
                return SignedKey(key_id=row[0], key=row[1], signature=row[2], fallback=False)
            row = await conn.fetchrow(
                "SELECT fallback_key_id, fallback_key, fallback_signature FROM devices"
                " WHERE device_id = $1 AND fallback_key IS NOT NULL",
                device_id,
            )
            if row is None:
                return None
            return SignedKey(key_id=row[0], key=row[1], signature=row[2], fallback=True)

        return await self._tx(run)

    async def key_counts(self, device_id: bytes) -> KeyCounts:
        return await self._read(lambda conn: _key_counts(conn, device_id))

    # -- tokens -------------------------------------------------------------------------

    async def add_token(self, user_key: bytes, token_hash: bytes) -> None:
        max_tokens = self._max_tokens

        async def run(conn: Conn) -> None:
            await self._lock(conn, user_key)
            owner = await conn.fetchval(
                "SELECT user_key FROM tokens WHERE token_hash = $1", token_hash
            )
            if owner is not None:
                if owner != user_key:
                    raise ProtocolError(ErrorCode.CONFLICT, "token is taken")
                return
            count = await conn.fetchval("SELECT count(*) FROM tokens WHERE user_key = $1", user_key)
            if count >= max_tokens:
                raise ProtocolError(ErrorCode.QUOTA, "too many delivery tokens")
            # Another user inserting the same hash concurrently: UniqueViolation, retried,
            # and the retry answers ``conflict``.
            await conn.execute("INSERT INTO tokens VALUES ($1, $2)", token_hash, user_key)

        await self._tx(run)

    async def revoke_token(self, user_key: bytes, token_hash: bytes) -> bool:
        async def run(conn: Conn) -> bool:
            status = await conn.execute(
                "DELETE FROM tokens WHERE token_hash = $1 AND user_key = $2", token_hash, user_key
            )
            return bool(_rowcount(status))

        return await self._tx(run)

    async def user_for_token(self, token_hash: bytes) -> bytes | None:
        async def run(conn: Conn) -> bytes | None:
            owner = await conn.fetchval(
                "SELECT user_key FROM tokens WHERE token_hash = $1", token_hash
            )
            return None if owner is None else bytes(owner)

        return await self._read(run)

    # -- mailboxes ----------------------------------------------------------------------

    async def deposit(self, items: Sequence[DepositItem], now_ms: int) -> DepositResult:
        max_mailbox = self._max_mailbox
        # Stable sort: mailbox rows are locked in one global order (no deadlock between
        # two multi-device deposits) and each device keeps the sender's order.
        ordered = sorted(items, key=lambda item: item.device_id)

        async def run(conn: Conn) -> DepositResult:
            stored = duplicates = 0
            news: dict[bytes, int] = {}
            for item in ordered:
                # One round trip per envelope: remember the id, bump the counter (row lock
                # on the mailbox), append the entry unless that would overflow the quota.
                fresh, seq, size = await conn.fetchrow(
                    _DEPOSIT_ONE,
                    item.device_id,
                    item.msg_id,
                    now_ms,
                    item.body,
                    max_mailbox,
                    item.expires_at,
                )
                if not fresh:
                    duplicates += 1
                    continue
                if size > max_mailbox:
                    # Raising rolls back the whole transaction: this deposit, nothing else.
                    raise ProtocolError(ErrorCode.QUOTA, "mailbox is full")
                news[item.device_id] = seq
                stored += 1
            return DepositResult(stored=stored, duplicates=duplicates, news=news)

        return await self._tx(run)

    async def fetch(self, device_id: bytes, after: int, limit: int) -> list[MailboxEntry]:
        async def run(conn: Conn) -> list[MailboxEntry]:
            rows = await conn.fetch(
                "SELECT seq, msg_id, body, received_at FROM mailbox_entries"
                " WHERE device_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
                device_id,
                after,
                limit,
            )
            return [MailboxEntry(seq=r[0], msg_id=r[1], body=r[2], received_at=r[3]) for r in rows]

        return await self._read(run)

    async def ack(self, device_id: bytes, up_to: int, now_ms: int) -> int:
        async def run(conn: Conn) -> int:
            deleted = _rowcount(
                await conn.execute(
                    "DELETE FROM mailbox_entries WHERE device_id = $1 AND seq <= $2",
                    device_id,
                    up_to,
                )
            )
            if deleted:
                await conn.execute(
                    "UPDATE mailboxes SET size = size - $1 WHERE device_id = $2",
                    deleted,
                    device_id,
                )
            await conn.execute(
                "DELETE FROM msg_ids WHERE device_id = $1 AND at < $2",
                device_id,
                now_ms - MSG_ID_RETENTION_MS,
            )
            return deleted

        return await self._tx(run)

    async def expire(self, before_ms: int) -> int:
        async def run(conn: Conn) -> int:
            rows = await conn.fetch(
                "DELETE FROM mailbox_entries WHERE received_at < $1 RETURNING device_id",
                before_ms,
            )
            counts = Counter(bytes(row[0]) for row in rows)
            # Sorted, as deposits lock mailboxes, so the two cannot deadlock.
            for device_id in sorted(counts):
                await conn.execute(
                    "UPDATE mailboxes SET size = size - $1 WHERE device_id = $2",
                    counts[device_id],
                    device_id,
                )
            return len(rows)

        return await self._tx(run)

    async def expire_timed(self, now_ms: int) -> int:
        async def run(conn: Conn) -> int:
            rows = await conn.fetch(
                "DELETE FROM mailbox_entries WHERE expires_at <= $1 RETURNING device_id", now_ms
            )
            counts = Counter(bytes(row[0]) for row in rows)
            for device_id in sorted(counts):
                await conn.execute(
                    "UPDATE mailboxes SET size = size - $1 WHERE device_id = $2",
                    counts[device_id],
                    device_id,
                )
            return len(rows)

        return await self._tx(run)

    async def mailbox_size(self, device_id: bytes) -> int:
        async def run(conn: Conn) -> int:
            size = await conn.fetchval("SELECT size FROM mailboxes WHERE device_id = $1", device_id)
            return 0 if size is None else int(size)

        return await self._read(run)

    async def last_seq(self, device_id: bytes) -> int:
        async def run(conn: Conn) -> int:
            seq = await conn.fetchval(
                "SELECT last_seq FROM mailboxes WHERE device_id = $1", device_id
            )
            return 0 if seq is None else int(seq)

        return await self._read(run)


async def _no_reset(conn: Conn) -> None:
    """Pool connections keep no per-use state to reset (see ``open``)."""


def _rowcount(status: str) -> int:
    """Rows affected, from a command status such as ``"DELETE 3"``."""
    return int(status.rsplit(" ", 1)[-1])


async def _key_counts(conn: Conn, device_id: bytes) -> KeyCounts:
    count = await conn.fetchval(
        "SELECT count(*) FROM one_time_keys WHERE device_id = $1", device_id
    )
    has_fallback = await conn.fetchval(
        "SELECT fallback_key IS NOT NULL FROM devices WHERE device_id = $1", device_id
    )
    return KeyCounts(one_time_keys=int(count), has_fallback_key=bool(has_fallback))


async def _forget_unlisted(conn: Conn, user_key: bytes, listed: set[bytes]) -> None:
    """Drop registered devices that a newer device list no longer names."""
    rows = await conn.fetch("SELECT device_id FROM devices WHERE user_key = $1", user_key)
    for row in rows:
        device_id = bytes(row[0])
        if device_id in listed:
            continue
        await conn.execute("DELETE FROM devices WHERE device_id = $1", device_id)
        await conn.execute("DELETE FROM one_time_keys WHERE device_id = $1", device_id)
        # Entries nobody can consume any more go; the seq counter stays (never reused).
        await conn.execute("DELETE FROM mailbox_entries WHERE device_id = $1", device_id)
        await conn.execute("UPDATE mailboxes SET size = 0 WHERE device_id = $1", device_id)
