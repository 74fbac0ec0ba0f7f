"""The scale-out store: PostgreSQL through asyncpg, shared by any number of nodes (DESIGN §7).

Same semantics as :mod:`samizdat.server.store.sqlite` (the conformance suite runs on
both). Differences that come from several nodes writing at once:

* Each operation is one transaction on a pooled connection. ``synchronous_commit=on``
  is forced per connection, so a commit (and thus ``DepositOk``) is on disk.
* Group commit on our side: deposits of concurrent sessions of one node wait in a queue
  and go to the database together, as one statement (``_DEPOSIT_BATCH``, arrays through
  ``unnest``) that is its own transaction: one round trip and one WAL flush per batch,
  each depositor answered after that commit. A batch in which some mailbox would overflow
  is rolled back whole and its deposits run one by one (``_DEPOSIT_ONE``), so one full
  mailbox refuses exactly its own deposit. An ack is one statement too.
* Token → user and user → devices are memoised per node (``cache.py``) once the node is
  told about writes on other nodes (:meth:`PostgresStore.share_invalidations`, over the
  Redis bus); without that every lookup reads the database.
* The ``mailboxes`` row is the per-mailbox lock: a deposit increments ``last_seq`` with
  ``INSERT .. ON CONFLICT DO UPDATE .. RETURNING``, so concurrent deposits on any node
  get distinct, increasing seqs.
* One lock order, so nothing deadlocks: mailbox rows in device-id order, then the entries
  of those mailboxes, then ``bodies`` rows in id order (the release trigger). A
  transaction deletes a device's entries only while it holds that device's mailbox row
  (deposits, acks, the TTL sweeps, a device list dropping a device); no transaction
  locks a mailbox row after a body row.
* ``claim_key`` uses ``FOR UPDATE SKIP LOCKED`` so concurrent claims never hand out the
  same key; per-user and per-device limits take a transaction-scoped advisory lock.
* A deadlock or serialization failure is retried a few times; any other database or
  connection failure is a :class:`~samizdat.errors.LocalError` (the client sees
  ``internal`` and retries), never a silent loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import asyncpg

from samizdat.errors import ErrorCode, LocalError, ProtocolError
from samizdat.protocol import limits
from samizdat.protocol.keys import DeviceKeys, SignedDeviceList, SignedKey
from samizdat.server.store.base import (
    DepositItem,
    DepositResult,
    KeyCounts,
    MailboxEntry,
    MsgIdSweeps,
    RegisteredDevice,
    shared_bodies,
)
from samizdat.server.store.cache import ReadCache, memoised_targets
from samizdat.server.store.migrations import Migration
from samizdat.server.store.pg_migrations import PG_MIGRATIONS

__all__ = ["BATCHES_IN_FLIGHT", "PostgresStore", "open_pool", "pg_migrate"]

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

#: The envelopes of many deposits in one statement (so one implicit transaction, one round
#: trip). Arrays: $1 device, $2 msg_id, $3 body, $4 expiry, $5 position in the batch
#: (devices ascending, then the senders' order: mailbox rows are locked in device order);
#: $6 now, $7 quota; $8 for an envelope whose body is shared (a fan-out's: its $3 is NULL)
#: the body's index in $9 (from 1), the shared bodies, each stored once in ``bodies``.
#: Returns (position, seq) of every fresh envelope; the duplicates are the
#: positions missing. Any mailbox over its quota divides by zero: the whole statement, and
#: so the batch, is rolled back, and the caller runs its deposits one by one.
_DEPOSIT_BATCH: Final = """
WITH input AS (
    SELECT * FROM unnest(
        $1::BYTEA[], $2::BYTEA[], $3::BYTEA[], $4::BIGINT[], $5::INT[], $8::INT[]
    ) AS t (device_id, msg_id, body, expires_at, pos, body_ref)
), fresh AS (
    -- In key order, not the batch's: two nodes writing one retried deposit (its envelopes
    -- in other orders) then wait on the unique index in one order, never on each other.
    INSERT INTO msg_ids SELECT device_id, msg_id, $6 FROM input ORDER BY device_id, msg_id
    ON CONFLICT DO NOTHING RETURNING device_id, msg_id
), ranked AS (
    SELECT i.device_id, i.msg_id, i.body, i.expires_at, i.pos, i.body_ref,
        row_number() OVER (PARTITION BY i.device_id ORDER BY i.pos) AS rank,
        count(*) OVER (PARTITION BY i.device_id) AS n
    FROM input i JOIN fresh f ON f.device_id = i.device_id AND f.msg_id = i.msg_id
), box AS (
    INSERT INTO mailboxes
    SELECT device_id, max(n), max(n) FROM ranked GROUP BY device_id ORDER BY device_id
    ON CONFLICT (device_id) DO UPDATE
    SET last_seq = mailboxes.last_seq + excluded.last_seq,
        size = mailboxes.size + excluded.size
    RETURNING device_id, last_seq, size
), shared AS (
    SELECT s.k, nextval(pg_get_serial_sequence('bodies', 'id')) AS id, s.body, c.n
    FROM unnest($9::BYTEA[]) WITH ORDINALITY AS s (body, k)
    JOIN (SELECT body_ref, count(*) AS n FROM ranked WHERE body_ref IS NOT NULL
          GROUP BY body_ref) c ON c.body_ref = s.k
), stored_bodies AS (
    INSERT INTO bodies (id, body, refs) OVERRIDING SYSTEM VALUE SELECT id, body, n FROM shared
), entry AS (
    INSERT INTO mailbox_entries
        (device_id, seq, msg_id, body, received_at, expires_at, body_id)
    SELECT r.device_id, b.last_seq - r.n + r.rank, r.msg_id, coalesce(r.body, ''::BYTEA), $6,
        r.expires_at, s.id
    FROM ranked r JOIN box b ON b.device_id = r.device_id LEFT JOIN shared s ON s.k = r.body_ref
)
SELECT r.pos, b.last_seq - r.n + r.rank, 1 / (CASE WHEN b.size > $7 THEN 0 ELSE 1 END)
FROM ranked r JOIN box b ON b.device_id = r.device_id
"""

#: The acks of many devices (each at most once) in one statement: $1 devices, $2 up_to
#: each. Locks as every statement that deletes entries does (module docstring): first the
#: mailbox rows, in device order (``locked``, run whole before the delete: an uncorrelated
#: subquery in its WHERE is a one-time filter, evaluated before the first row is read),
#: then the entries, then (the release trigger, at the end of the statement) the bodies in
#: id order. The delete starts above the mailbox's ``acked`` (nothing at or below it is
#: left): a range from the device's first seq would walk every index entry of its earlier
#: acks that vacuum has not yet removed. Returns (device, entries deleted) for each.
_ACK_BATCH: Final = """
WITH input AS (
    SELECT * FROM unnest($1::BYTEA[], $2::BIGINT[]) AS t (device_id, up_to)
), locked AS (
    SELECT device_id, acked FROM mailboxes WHERE device_id = ANY($1::BYTEA[])
    ORDER BY device_id FOR UPDATE
), gone AS (
    DELETE FROM mailbox_entries e USING input i JOIN locked l ON l.device_id = i.device_id
    WHERE e.device_id = i.device_id AND e.seq > l.acked AND e.seq <= i.up_to
        AND (SELECT count(*) FROM locked) >= 0
    RETURNING e.device_id
), counts AS (
    SELECT device_id, count(*) AS n FROM gone GROUP BY device_id
), box AS (
    UPDATE mailboxes m
    SET size = m.size - coalesce(c.n, 0), acked = greatest(m.acked, least(i.up_to, m.last_seq))
    FROM input i LEFT JOIN counts c ON c.device_id = i.device_id
    WHERE m.device_id = i.device_id
)
SELECT i.device_id, coalesce(c.n, 0) FROM input i LEFT JOIN counts c ON c.device_id = i.device_id
"""

#: The TTL sweeps, in the same lock order as acks: $1 the devices that have entries to
#: drop (read first, without locks), then the mailbox rows of those devices are locked in
#: device order before any entry is deleted; the entry rows of a device are deleted only
#: under its mailbox lock, so sweeps, acks and deposits wait on mailboxes alone, always in
#: device order, and on bodies (the trigger) only after that, in id order. An entry of a
#: device not in $1 (deposited meanwhile) waits for the next sweep.
_SWEEP: Final = """
WITH locked AS (
    SELECT device_id FROM mailboxes WHERE device_id = ANY($1::BYTEA[])
    ORDER BY device_id FOR UPDATE
), gone AS (
    DELETE FROM mailbox_entries e
    WHERE e.device_id = ANY($1::BYTEA[]) AND {condition}
        AND (SELECT count(*) FROM locked) >= 0
    RETURNING e.device_id
), counts AS (
    SELECT device_id, count(*) AS n FROM gone GROUP BY device_id
), box AS (
    UPDATE mailboxes m SET size = m.size - c.n FROM counts c WHERE m.device_id = c.device_id
)
SELECT coalesce(sum(n), 0) FROM counts
"""
#: Forget msg_ids past retention: $1 devices, $2 the age below which. A statement of its
#: own, run only for devices due (``MsgIdSweeps``, at most hourly): as a part of every ack
#: it was a scan of the whole table per batch whenever the planner's estimates said a scan
#: beat an index range per device (a batch naming most devices; no statistics yet). One
#: cutoff for all, a constant the planner can weigh against the age index.
_FORGET_MSG_IDS: Final = """
DELETE FROM msg_ids WHERE device_id = ANY($1::BYTEA[]) AND at < $2
"""
_EXPIRE: Final = _SWEEP.format(condition="e.received_at < $2")
_EXPIRE_TIMED: Final = _SWEEP.format(condition="e.expires_at <= $2")

#: Batches a node has in the database at once. One: a connection pipelines deposits
#: (session.py), and two batches in flight could lock a mailbox row in either order, so
#: the later deposit could take the lower seq. The next batch fills while this one commits.
BATCHES_IN_FLIGHT: Final = 1
#: At most this many envelopes go to the database in one batch.
_MAX_BATCH_ENVELOPES: Final = 2000
#: A memoised answer is forgotten after this long even without an invalidation (a safety
#: net for an invalidation lost on a broken Redis connection of the writing node).
_CACHE_MAX_AGE: Final = 60.0
#: Cache keys, as published to other nodes: a kind byte, then the token hash or user key.
_TOKEN_KEY: Final = b"t"
_USER_KEY: Final = b"u"

Announce = Callable[[bytes], Awaitable[None]]
#: Until this node has heard every invalidation published before the call (True), or
#: False if it cannot tell (``RedisBus.caught_up``).
Barrier = Callable[[], Awaitable[bool]]


@dataclass
class _Pending:
    """One deposit waiting for its batch."""

    items: list[DepositItem]
    now_ms: int
    future: asyncio.Future[DepositResult] = field(repr=False)


@dataclass
class _PendingAck:
    """One ack waiting for its batch."""

    device_id: bytes = field(repr=False)
    up_to: int
    now_ms: int
    future: asyncio.Future[int] = field(repr=False)


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
        batches_in_flight: int = BATCHES_IN_FLIGHT,
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
        self._batches_in_flight = batches_in_flight
        # Deposits waiting for the next batch, and the committers that take them.
        self._queue: deque[_Pending] = deque()
        self._acks: deque[_PendingAck] = deque()
        self._msg_id_sweeps = MsgIdSweeps()
        self._queued = asyncio.Event()
        self._committers: list[asyncio.Task[None]] = []
        self._closing = False
        #: Batches written so far (each one statement, one commit): for tests and benches.
        self.deposit_batches = 0
        #: Transactions retried, by the error's class name (``DeadlockDetectedError``, …):
        #: a deadlock here means two statements took their locks in different orders.
        self.retried: Counter[str] = Counter()
        # Memos of the two lookups every deposit makes; used only while ``_announce`` is
        # set and the node hears other nodes' invalidations (``cache_live``).
        self._token_users: ReadCache[bytes, bytes] = ReadCache()
        self._user_devices: ReadCache[bytes, frozenset[bytes]] = ReadCache()
        self._announce: Announce | None = None
        self._barrier: Barrier | None = None
        self._cache_live = False
        self._cache_since = 0.0

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
        self._closing = False
        self._committers = [
            asyncio.create_task(self._run_batches(), name="samizdat-pg-deposits")
            for _ in range(self._batches_in_flight)
        ]

    async def close(self) -> None:
        committers, self._committers = self._committers, []
        if committers:
            # Deposits already queued are written (or fail) before the pool goes.
            self._closing = True
            self._queued.set()
            await asyncio.wait(committers)
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    # -- the per-node cache and its invalidation ------------------------------------------

    def share_invalidations(self, announce: Announce, barrier: Barrier | None = None) -> None:
        """Memoise token and device-list lookups from now on, telling other nodes of every
        write through ``announce`` (awaited after the commit, before the write returns).

        The caller (the Redis bus) must call :meth:`cache_live` with True once it hears
        other nodes' invalidations, :meth:`invalidated` for each, and
        :meth:`cache_live` with False whenever it may have missed some. With ``barrier``
        a memoised token answer is used only after it (and re-read then): a revocation
        that another node published before this lookup began has been heard, however
        busy this node's loop; without it, one that is readable but not yet handled is
        missed (docs/scaling.md, "one loop turn"). Device lists keep that window.
        """
        self._announce = announce
        self._barrier = barrier

    async def _caught_up(self) -> bool:
        return self._barrier is None or await self._barrier()

    def cache_live(self, live: bool) -> None:
        self._drop_cache()
        self._cache_live = live and self._announce is not None
        self._cache_since = time.monotonic()

    def invalidated(self, key: bytes) -> None:
        """Another node changed the answer for ``key`` (a token hash or a user key)."""
        if key[:1] == _TOKEN_KEY:
            self._token_users.discard(key[1:])
        elif key[:1] == _USER_KEY:
            self._user_devices.discard(key[1:])

    def _drop_cache(self) -> None:
        self._token_users.invalidate()
        self._user_devices.invalidate()

    def _cache_usable(self) -> bool:
        if not self._cache_live:
            return False
        now = time.monotonic()
        if now - self._cache_since > _CACHE_MAX_AGE:
            self._drop_cache()
            self._cache_since = now
        return True

    async def _write_invalidating(self, key: bytes, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """A write that may change a memoised answer: forget it locally around the commit,
        then tell the other nodes before the write returns."""
        self.invalidated(key)
        try:
            return await self._tx(fn)
        finally:
            self.invalidated(key)
            if self._announce is not None:
                await self._announce(key)

    async def _tx(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """Run ``fn`` in one transaction; retry on deadlocks and lost races."""
        return await self._attempt(fn, transaction=True)

    async def _statement(self, fn: Callable[[Conn], Awaitable[_T]]) -> _T:
        """One statement as its own transaction (no BEGIN/COMMIT round trips); retried on
        deadlocks and lost races like :meth:`_tx`."""
        return await self._attempt(fn, transaction=False)

    async def _attempt(self, fn: Callable[[Conn], Awaitable[_T]], *, transaction: bool) -> _T:
        if self._pool is None:
            raise LocalError("store is not open")
        for attempt in range(_RETRIES):
            try:
                async with self._pool.acquire() as conn:
                    if not transaction:
                        return await fn(conn)
                    async with conn.transaction():
                        return await fn(conn)
            except asyncpg.exceptions.DivisionByZeroError:
                # Only the batch deposit divides by zero, on purpose: a mailbox over quota.
                raise _QuotaInBatch from None
            except _RETRYABLE as exc:
                self.retried[type(exc).__name__] += 1
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

        await self._write_invalidating(_USER_KEY + user_key, run)

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
        cache = self._user_devices if self._cache_usable() else None
        # No barrier here (unlike tokens): a list one loop turn stale refuses a deposit to a
        # just-added device (the client retries) or stores one for a device being dropped,
        # and a deposit asks this right after its token, so it would wait twice.
        if cache is not None and (cached := cache.get(user_key)) is not None:
            return cached
        generation = self._user_devices.generation

        async def run(conn: Conn) -> frozenset[bytes]:
            rows = await conn.fetch("SELECT device_id FROM devices WHERE user_key = $1", user_key)
            return frozenset(bytes(row[0]) for row in rows)

        devices = await self._read(run)
        if cache is not None:
            cache.put(user_key, devices, generation)
        return devices

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

        return await self._write_invalidating(_TOKEN_KEY + token_hash, run)

    async def user_for_token(self, token_hash: bytes) -> bytes | None:
        cache = self._token_users if self._cache_usable() else None
        if cache is not None and cache.get(token_hash) is not None and await self._caught_up():
            # Read again: an invalidation heard meanwhile has forgotten it.
            if (cached := cache.get(token_hash)) is not None:
                return cached
        generation = self._token_users.generation

        async def run(conn: Conn) -> bytes | None:
            owner = await conn.fetchval(
                "SELECT user_key FROM tokens WHERE token_hash = $1", token_hash
            )
            return None if owner is None else bytes(owner)

        user_key = await self._read(run)
        # Unknown tokens are not memoised: add_token then needs no invalidation.
        if cache is not None and user_key is not None:
            cache.put(token_hash, user_key, generation)
        return user_key

    async def fanout_targets(
        self, token_hashes: Sequence[bytes]
    ) -> dict[bytes, tuple[bytes, frozenset[bytes]]]:
        # Memoised answers first (when the cache is live); the rest in one statement.
        usable = self._cache_usable()
        token_users, user_devices = self._token_users, self._user_devices
        if usable:
            found, missing = memoised_targets(token_hashes, token_users, user_devices)
            if found and self._barrier is not None:
                if await self._barrier():
                    # Again after the barrier: invalidations heard meanwhile forgot keys.
                    found, missing = memoised_targets(token_hashes, token_users, user_devices)
                else:
                    found, missing = {}, list(token_hashes)
        else:
            found, missing = {}, list(token_hashes)
        if not missing:
            return found
        generations = (token_users.generation, user_devices.generation)

        async def run(conn: Conn) -> dict[bytes, tuple[bytes, frozenset[bytes]]]:
            rows = await conn.fetch(
                "SELECT t.token_hash, t.user_key,"
                " array_remove(array_agg(d.device_id), NULL) AS devices"
                " FROM tokens t LEFT JOIN devices d ON d.user_key = t.user_key"
                " WHERE t.token_hash = ANY($1::bytea[])"
                " GROUP BY t.token_hash, t.user_key",
                list(set(missing)),
            )
            return {
                bytes(row[0]): (bytes(row[1]), frozenset(bytes(d) for d in row[2])) for row in rows
            }

        read = await self._read(run)
        if usable:
            for token_hash, (user_key, devices) in read.items():
                token_users.put(token_hash, user_key, generations[0])
                user_devices.put(user_key, devices, generations[1])
        found.update(read)
        return found

    # -- mailboxes ----------------------------------------------------------------------

    async def deposit(self, items: Sequence[DepositItem], now_ms: int) -> DepositResult:
        if not self._committers:
            raise LocalError("store is not open")
        future: asyncio.Future[DepositResult] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(list(items), now_ms, future))
        self._queued.set()
        return await future

    async def _run_batches(self) -> None:
        """The group committer: whatever deposits (or else acks) queued up while the
        previous batch was in the database go in the next one."""
        acks_turn = False
        while True:
            # Deposits and acks take turns, so neither starves the other.
            acks_turn = not acks_turn
            if self._acks and (acks_turn or not self._queue):
                acks: dict[bytes, _PendingAck] = {}
                held: list[_PendingAck] = []
                while self._acks and len(acks) < _MAX_BATCH_ENVELOPES:
                    ack = self._acks.popleft()
                    # One ack per device in a statement; a second waits for the next.
                    if ack.device_id in acks:
                        held.append(ack)
                    else:
                        acks[ack.device_id] = ack
                self._acks.extendleft(reversed(held))
                await self._ack_batch(list(acks.values()))
                continue
            if self._queue:
                batch: list[_Pending] = []
                envelopes = 0
                while self._queue and (not batch or envelopes < _MAX_BATCH_ENVELOPES):
                    pending = self._queue.popleft()
                    batch.append(pending)
                    envelopes += len(pending.items)
                await self._deposit_batch(batch)
                continue
            if self._closing:
                return
            # No await between this check and the wait: a deposit cannot slip in unseen.
            self._queued.clear()
            await self._queued.wait()

    async def _ack_batch(self, batch: list[_PendingAck]) -> None:
        sweeps = self._msg_id_sweeps
        forget = {
            ack.device_id: cutoff
            for ack in batch
            if (cutoff := sweeps.cutoff(ack.device_id, ack.now_ms)) is not None
        }

        async def run(conn: Conn) -> list[Any]:
            return list(
                await conn.fetch(
                    _ACK_BATCH, [ack.device_id for ack in batch], [ack.up_to for ack in batch]
                )
            )

        async def forget_old(conn: Conn) -> None:
            # One cutoff for all: the earliest, so no device forgets a msg_id early.
            await conn.execute(_FORGET_MSG_IDS, list(forget), min(forget.values()))

        try:
            rows = await self._statement(run)
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        deleted = {bytes(row[0]): int(row[1]) for row in rows}
        for ack in batch:
            if not ack.future.done():
                ack.future.set_result(deleted.get(ack.device_id, 0))
        if forget:
            with contextlib.suppress(LocalError):  # logged; the rows wait for the next sweep
                await self._statement(forget_old)

    async def _deposit_batch(self, batch: list[_Pending]) -> None:
        """Write ``batch`` in one statement and answer each depositor."""
        if not batch:
            return
        try:
            results = await self._write_batch(batch)
        except _QuotaInBatch:
            # Someone's mailbox is full: nothing was written. Each deposit on its own,
            # so only those that overflow are refused.
            for pending in batch:  # in order: a connection's deposits keep their seq order
                await self._deposit_alone(pending)
            return
        except BaseException as exc:
            _fail(batch, exc)
            if not isinstance(exc, Exception):
                raise
            return
        for pending, result in zip(batch, results, strict=True):
            if not pending.future.done():
                pending.future.set_result(result)

    async def _write_batch(self, batch: list[_Pending]) -> list[DepositResult]:
        # Positions: devices ascending (one lock order on every node), then the deposit's
        # and the sender's order. A (device, msg_id) seen earlier in the batch is a
        # duplicate without asking the database.
        now_ms = batch[0].now_ms
        flat: list[tuple[bytes, int, int, DepositItem]] = []
        seen: set[tuple[bytes, bytes]] = set()
        for owner, pending in enumerate(batch):
            now_ms = max(now_ms, pending.now_ms)
            for index, item in enumerate(pending.items):
                key = (item.device_id, item.msg_id)
                if key in seen:
                    continue
                seen.add(key)
                flat.append((item.device_id, owner, index, item))
        flat.sort(key=lambda entry: entry[:3])
        items = [entry[3] for entry in flat]
        # A body that several envelopes share (a fan-out's) goes over the wire and into
        # ``bodies`` once; its envelopes carry its index instead.
        repeated = shared_bodies(items)
        bodies: list[bytes | None] = []
        refs: list[int | None] = []
        shared: list[bytes] = []
        numbers: dict[int, int] = {}
        for i in items:
            if repeated and id(i.body) in repeated:
                ref = numbers.get(id(i.body))
                if ref is None:
                    shared.append(i.body)
                    ref = numbers[id(i.body)] = len(shared)
                bodies.append(None)
                refs.append(ref)
            else:
                bodies.append(i.body)
                refs.append(None)

        async def run(conn: Conn) -> list[Any]:
            return list(
                await conn.fetch(
                    _DEPOSIT_BATCH,
                    [i.device_id for i in items],
                    [i.msg_id for i in items],
                    bodies,
                    [i.expires_at for i in items],
                    list(range(len(items))),
                    now_ms,
                    self._max_mailbox,
                    refs,
                    shared,
                )
            )

        rows = await self._statement(run)
        self.deposit_batches += 1
        stored = [0] * len(batch)
        news: list[dict[bytes, int]] = [{} for _ in batch]
        for pos, seq, _ in rows:
            device_id, owner, _, _ = flat[pos]
            stored[owner] += 1
            if seq > news[owner].get(device_id, 0):
                news[owner][device_id] = seq
        return [
            DepositResult(stored=stored[k], duplicates=len(p.items) - stored[k], news=news[k])
            for k, p in enumerate(batch)
        ]

    async def _deposit_alone(self, pending: _Pending) -> None:
        try:
            result = await self._deposit_one(pending.items, pending.now_ms)
        except Exception as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    async def _deposit_one(self, items: Sequence[DepositItem], now_ms: int) -> DepositResult:
        """One deposit in its own transaction (the path a batch with a full mailbox takes)."""
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
                "SELECT e.seq, e.msg_id, coalesce(b.body, e.body), e.received_at"
                " FROM mailbox_entries e LEFT JOIN bodies b ON b.id = e.body_id"
                " WHERE e.device_id = $1 AND e.seq > $2 ORDER BY e.seq LIMIT $3",
                device_id,
                after,
                limit,
            )
            return [MailboxEntry(seq=r[0], msg_id=r[1], body=r[2], received_at=r[3]) for r in rows]

        return await self._read(run)

    async def ack(self, device_id: bytes, up_to: int, now_ms: int) -> int:
        if not self._committers:
            raise LocalError("store is not open")
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._acks.append(_PendingAck(device_id, up_to, now_ms, future))
        self._queued.set()
        return await future

    async def expire(self, before_ms: int) -> int:
        return await self._sweep(
            "SELECT DISTINCT device_id FROM mailbox_entries WHERE received_at < $1",
            _EXPIRE,
            before_ms,
        )

    async def expire_timed(self, now_ms: int) -> int:
        return await self._sweep(
            "SELECT DISTINCT device_id FROM mailbox_entries WHERE expires_at <= $1",
            _EXPIRE_TIMED,
            now_ms,
        )

    async def _sweep(self, find: str, delete: str, bound_ms: int) -> int:
        async def run(conn: Conn) -> int:
            # Which mailboxes to lock is read first: the delete may lock only those.
            devices = [bytes(row[0]) for row in await conn.fetch(find, bound_ms)]
            if not devices:
                return 0
            return int(await conn.fetchval(delete, devices, bound_ms))

        return await self._statement(run)

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


def _fail(batch: Sequence[_Pending | _PendingAck], exc: BaseException) -> None:
    """Answer every request of a failed batch with a LocalError (``internal``)."""
    if not isinstance(exc, LocalError):
        _log.error("store batch failed: %r", exc)
        exc = LocalError("store batch failed")
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


class _QuotaInBatch(Exception):
    """A mailbox of the batch would overflow; the statement was rolled back."""


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
        # The mailbox row first: the lock order of every delete of entries (_ACK_BATCH).
        await conn.execute("UPDATE mailboxes SET size = 0 WHERE device_id = $1", device_id)
        await conn.execute("DELETE FROM mailbox_entries WHERE device_id = $1", device_id)
