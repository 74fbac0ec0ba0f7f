"""The default store: one SQLite database in WAL mode with group commit (DESIGN §5, §7).

One connection writes. Write jobs run their statements on the event loop, one transaction
for every job queued meanwhile (if one raises, e.g. a refused deposit, the batch is rolled
back and run again with each job in its own SAVEPOINT, so that one undoes only itself);
the COMMIT, which writes the WAL and waits for its fsync (``synchronous=FULL``), runs on a
committer thread, and only then are the callers' futures resolved. Jobs that arrive while
a commit is in flight go together in the next one. Durability thus costs one fsync per
batch, not per envelope, and an acknowledged deposit survives SIGKILL and power loss.

Why statements on the loop: Python's sqlite3 releases the GIL around every statement, so
a writer thread running them handed the GIL back and forth with the loop several times per
job; on one core that was ~15 % of the server's CPU in futex wake-ups and context
switches. The commit is the one step long enough to be worth a thread.

Acknowledgements are the one write that is not made durable on its own: a batch of only
acks commits with ``synchronous=NORMAL`` (on disk at the next fsync, which the next deposit
makes; a process kill loses nothing, a power cut at worst delivers an acknowledged entry
again, which clients drop by msg_id).

Reads run on the event loop too, on a second, read-only connection, so they never wait
behind a batch and its fsync; in WAL mode each sees every commit made before it began.
The two lookups every deposit makes are memoised in memory (``cache.py``): this process
is the only writer of the file, so it knows when an answer changes. For the same reason it
keeps the committed tail of each mailbox (``recent.py``), so a live consumer's fetch needs
no read at all.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeVar

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
from samizdat.server.store.migrations import MIGRATIONS, SCHEMA_VERSION_TABLE, Migration
from samizdat.server.store.recent import RecentEntries

__all__ = ["SqliteStore", "migrate"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")
#: Most operations committed in one transaction; bounds the latency of the first one.
_MAX_BATCH: Final = 512
#: Ids per ``IN (...)`` list (under SQLite's oldest host-parameter limit, 999).
_IN_CHUNK: Final = 500

# The statements of every envelope (bench/sqlite_statements.py times these very strings).
#: Deposit: remember the msg_id (no row: a duplicate).
INSERT_MSG_ID: Final = "INSERT OR IGNORE INTO msg_ids VALUES (?, ?, ?)"
#: Deposit: the next seq and the size after it, creating the mailbox if need be.
NEXT_SEQ: Final = (
    "INSERT INTO mailboxes VALUES (?, 1, 1) ON CONFLICT (device_id)"
    " DO UPDATE SET last_seq = last_seq + 1, size = size + 1"
    " RETURNING last_seq, size"
)
#: Deposit: the entry with its body inline.
INSERT_ENTRY: Final = (
    "INSERT INTO mailbox_entries (device_id, seq, msg_id, body, received_at, expires_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
#: Acknowledgement: the entries up to a seq.
DELETE_ACKED: Final = "DELETE FROM mailbox_entries WHERE device_id = ? AND seq <= ?"
#: Acknowledgement: the mailbox's size after it.
SHRINK_MAILBOX: Final = "UPDATE mailboxes SET size = size - ? WHERE device_id = ?"


@dataclass
class _Job:
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    #: Run with the result once committed, in commit order, before any caller resumes
    #: (keeps ``RecentEntries`` exact).
    on_commit: Callable[[Any], None]
    #: False: this write may wait for a later batch's fsync (acknowledgements).
    durable: bool


_Outcome = tuple[_Job, Any, BaseException | None]
#: An entry a deposit stored, and for which device.
_Stored = tuple[bytes, MailboxEntry]


def _resolve_all(outcomes: list[_Outcome]) -> None:
    for job, result, error in outcomes:
        if error is None:
            job.on_commit(result)
    for job, result, error in outcomes:
        if job.future.cancelled():
            continue
        if error is not None:
            job.future.set_exception(error)
        else:
            job.future.set_result(result)


def _run_isolated(conn: sqlite3.Connection, batch: list[_Job]) -> list[_Outcome]:
    """Run each job in its own SAVEPOINT: one that raises is undone, the others stay."""
    outcomes: list[_Outcome] = []
    for job in batch:
        conn.execute("SAVEPOINT job")
        try:
            result = job.fn(conn)
        except Exception as exc:
            conn.execute("ROLLBACK TO job")
            conn.execute("RELEASE job")
            outcomes.append((job, None, exc))
        else:
            conn.execute("RELEASE job")
            outcomes.append((job, result, None))
    return outcomes


def _failed(batch: list[_Job]) -> list[_Outcome]:
    return [(job, None, LocalError("store transaction failed")) for job in batch]


class _GroupCommit:
    """The writing connection: statements on the event loop, each COMMIT on a thread.

    At most one transaction is open or committing; jobs submitted meanwhile wait in
    ``_pending`` and form the next batch once the commit before them is on disk.
    """

    def __init__(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self._loop = loop
        self._pending: list[_Job] = []
        self._scheduled = False
        self._committing = False
        self._synchronous = "FULL"
        self._idle: asyncio.Future[None] | None = None
        self._commits: queue.SimpleQueue[list[_Outcome] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(
            target=self._run_commits, name="samizdat-sqlite-commit", daemon=True
        )
        self._thread.start()
        #: Number of transactions committed; lets tests see that batching happens.
        self.commits = 0

    def __repr__(self) -> str:
        return f"_GroupCommit(pending={len(self._pending)}, committing={self._committing})"

    def submit(
        self,
        fn: Callable[[sqlite3.Connection], Any],
        on_commit: Callable[[Any], None],
        durable: bool,
    ) -> asyncio.Future[Any]:
        """Queue ``fn`` for the next batch; its future resolves once that batch committed."""
        if asyncio.get_running_loop() is not self._loop:
            raise LocalError("the store is used from one event loop only")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending.append(_Job(fn, future, on_commit, durable))
        self._schedule()
        return future

    def _schedule(self) -> None:
        # On the next turn, not now: callers resumed by the last commit submit their next
        # jobs first, so those join this batch.
        if not self._scheduled and not self._committing:
            self._scheduled = True
            self._loop.call_soon(self._begin)

    def _begin(self) -> None:
        self._scheduled = False
        if self._committing or not self._pending:
            return
        batch = self._pending[:_MAX_BATCH]
        del self._pending[:_MAX_BATCH]
        outcomes = self._execute(batch)
        if outcomes is None:
            self._settle(_failed(batch))
            return
        self._committing = True
        self._commits.put(outcomes)

    def _execute(self, batch: list[_Job]) -> list[_Outcome] | None:
        """Run the batch's statements in an open transaction; None if the database failed.

        Optimistic: the jobs first run back to back. Only if one raises (a full mailbox, a
        conflict: rare) is the transaction rolled back and the batch run again with each
        job in its own SAVEPOINT. The two extra statements per job cost ~8 % of the
        server's instructions per envelope when paid every time. Jobs are functions of
        the connection (the only other state one touches is ack()'s sweep memo, a hint
        that at worst postpones a sweep), so running one twice is safe.
        """
        conn = self._conn
        try:
            synchronous = "FULL" if any(job.durable for job in batch) else "NORMAL"
            if synchronous != self._synchronous:
                conn.execute(f"PRAGMA synchronous={synchronous}")
                self._synchronous = synchronous
            conn.execute("BEGIN IMMEDIATE")
            try:
                return [(job, job.fn(conn), None) for job in batch]
            except Exception:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                conn.execute("BEGIN IMMEDIATE")
                return _run_isolated(conn, batch)
        except sqlite3.Error as exc:
            _log.error("store transaction failed: %s", type(exc).__name__)
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return None

    def _run_commits(self) -> None:
        conn = self._conn
        while True:
            outcomes = self._commits.get()
            if outcomes is None:
                return
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _log.error("store commit failed: %s", type(exc).__name__)
                try:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
                outcomes = _failed([job for job, _, _ in outcomes])
                committed = False
            else:
                committed = True
            try:
                self._loop.call_soon_threadsafe(self._committed, outcomes, committed)
            except RuntimeError:  # the loop is gone; nobody is waiting
                return

    def _committed(self, outcomes: list[_Outcome], committed: bool) -> None:
        self._committing = False
        self.commits += committed
        self._settle(outcomes)

    def _settle(self, outcomes: list[_Outcome]) -> None:
        _resolve_all(outcomes)
        if self._pending:
            self._schedule()
        elif self._idle is not None and not self._committing and not self._idle.done():
            self._idle.set_result(None)

    async def close(self) -> None:
        """Commit what is queued, then stop the thread and close the connection."""
        while self._pending or self._committing or self._scheduled:
            self._idle = self._loop.create_future()
            await self._idle
        self._commits.put(None)
        await asyncio.to_thread(self._thread.join)
        self._conn.close()


class SqliteStore:
    """:class:`~samizdat.server.store.base.Store` on one SQLite file."""

    def __init__(
        self,
        path: Path,
        *,
        max_mailbox_entries: int = limits.MAX_MAILBOX_ENTRIES,
        max_stored_one_time_keys: int = limits.MAX_STORED_ONE_TIME_KEYS,
        max_tokens_per_user: int = limits.MAX_TOKENS_PER_USER,
    ) -> None:
        self._path = path
        self._max_mailbox = max_mailbox_entries
        self._max_otks = max_stored_one_time_keys
        self._max_tokens = max_tokens_per_user
        self._writer: _GroupCommit | None = None
        # Reads go to a second connection on their own thread: in WAL mode they see the
        # last commit without waiting behind the writer's batches and fsyncs.
        self._reader: sqlite3.Connection | None = None
        # Event-loop side memos of the two lookups every deposit makes (cache.py).
        self._token_users: ReadCache[bytes, bytes] = ReadCache()
        self._user_devices: ReadCache[bytes, frozenset[bytes]] = ReadCache()
        # The committed tail of each mailbox, so a live consumer's fetch skips the reader.
        self._recent = RecentEntries()
        self._msg_id_sweeps = MsgIdSweeps()
        self._open_error: BaseException | None = None

    def __repr__(self) -> str:
        return "SqliteStore(<db>)"

    @property
    def commits(self) -> int:
        """Number of transactions committed; lets tests see that batching happens."""
        return 0 if self._writer is None else self._writer.commits

    # -- the connections ----------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            raise LocalError("store already open")
        conn = await asyncio.to_thread(self._connect)
        self._writer = _GroupCommit(conn, asyncio.get_running_loop())
        # After the writer migrated the schema.
        try:
            self._reader = await asyncio.to_thread(self._connect_reader)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.close()
        writer, self._writer = self._writer, None
        if writer is not None:
            await writer.close()

    def _connect(self) -> sqlite3.Connection:
        # Used by the loop's thread and the committer thread, never by both at once.
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a commit is on disk before the futures resolve, so DepositOk is honest.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # Deleted entries (acknowledged, expired) are zeroed in place, free pages included:
        # a disappearing message's ciphertext does not outlive it in the file (§6.2).
        conn.execute("PRAGMA secure_delete=ON")
        migrate(conn)
        return conn

    def _connect_reader(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA query_only=ON")
        return conn

    async def _call(
        self,
        fn: Callable[[sqlite3.Connection], _T],
        on_commit: Callable[[_T], None] | None = None,
        *,
        durable: bool = True,
    ) -> _T:
        """Run ``fn`` in the next batch of the writer; resolves once committed.

        ``on_commit`` keeps the recent entries exact; a write without one may have changed
        any mailbox, so they are all forgotten when it commits. ``durable=False``: the
        commit need not wait for its own fsync (see the module's docstring).
        """
        if self._writer is None:
            raise LocalError("store is not open")
        result: _T = await self._writer.submit(fn, on_commit or self._forget_recent, durable)
        return result

    def _forget_recent(self, _result: object) -> None:
        self._recent.clear()

    async def _write_uncached(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """A write that may change memoised answers: invalidate around the commit."""
        self._token_users.invalidate()
        self._user_devices.invalidate()
        try:
            return await self._call(fn)
        finally:
            self._token_users.invalidate()
            self._user_devices.invalidate()

    async def _read(self, fn: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run a read-only ``fn`` on the reader connection, here on the event loop.

        Autocommit: it sees everything committed before it started and never waits for
        the writer (WAL). Reads are index lookups of pages the OS has cached; a thread
        hop (a futex wake, two context switches, a wake-up of the loop) cost more.
        """
        if self._reader is None:
            raise LocalError("store is not open")
        try:
            return fn(self._reader)
        except sqlite3.Error as exc:
            _log.error("store read failed: %s", type(exc).__name__)
            raise LocalError("store read failed") from None

    # -- devices and keys ---------------------------------------------------------------

    async def register_device(
        self,
        user_key: bytes,
        device_list: SignedDeviceList,
        device_list_version: int,
        listed: Sequence[bytes],
        device: DeviceKeys,
    ) -> None:
        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT list_version, list_body FROM users WHERE user_key = ?", (user_key,)
            ).fetchone()
            if row is None:
                conn.execute(
                    "INSERT INTO users VALUES (?, ?, ?, ?)",
                    (user_key, device_list_version, device_list.body, device_list.signature),
                )
            elif device_list_version > row[0]:
                conn.execute(
                    "UPDATE users SET list_version = ?, list_body = ?, list_signature = ?"
                    " WHERE user_key = ?",
                    (device_list_version, device_list.body, device_list.signature, user_key),
                )
                _forget_unlisted(conn, user_key, set(listed))
            elif device_list_version < row[0] or device_list.body != row[1]:
                raise ProtocolError(ErrorCode.CONFLICT, "a newer device list is registered")
            owner = conn.execute(
                "SELECT user_key FROM devices WHERE device_id = ?", (device.device_id,)
            ).fetchone()
            if owner is not None and owner[0] != user_key:
                raise ProtocolError(ErrorCode.CONFLICT, "device belongs to another user")
            if owner is None:
                conn.execute(
                    "INSERT INTO devices (device_id, user_key, signing_key, identity_key,"
                    " sealing_key) VALUES (?, ?, ?, ?, ?)",
                    (
                        device.device_id,
                        user_key,
                        device.signing_key,
                        device.identity_key,
                        device.sealing_key,
                    ),
                )
            else:
                conn.execute(
                    "UPDATE devices SET identity_key = ?, sealing_key = ? WHERE device_id = ?",
                    (device.identity_key, device.sealing_key, device.device_id),
                )

        await self._write_uncached(run)

    async def get_device(self, device_id: bytes) -> RegisteredDevice | None:
        def run(conn: sqlite3.Connection) -> RegisteredDevice | None:
            row = conn.execute(
                f"SELECT {RegisteredDevice.COLUMNS}"
                " FROM devices d JOIN users u ON u.user_key = d.user_key"
                " WHERE d.device_id = ?",
                (device_id,),
            ).fetchone()
            if row is None:
                return None
            return RegisteredDevice.from_row(device_id, row)

        return await self._read(run)

    async def user_devices(self, user_key: bytes) -> frozenset[bytes]:
        cached = self._user_devices.get(user_key)
        if cached is not None:
            return cached
        generation = self._user_devices.generation

        def run(conn: sqlite3.Connection) -> frozenset[bytes]:
            rows = conn.execute("SELECT device_id FROM devices WHERE user_key = ?", (user_key,))
            return frozenset(row[0] for row in rows)

        devices = await self._read(run)
        self._user_devices.put(user_key, devices, generation)
        return devices

    async def add_one_time_keys(
        self, device_id: bytes, keys: Sequence[SignedKey], fallback: SignedKey | None
    ) -> KeyCounts:
        max_otks = self._max_otks

        def run(conn: sqlite3.Connection) -> KeyCounts:
            conn.executemany(
                "INSERT OR IGNORE INTO one_time_keys (device_id, key_id, key, signature)"
                " VALUES (?, ?, ?, ?)",
                [(device_id, k.key_id, k.key, k.signature) for k in keys],
            )
            if fallback is not None:
                conn.execute(
                    "UPDATE devices SET fallback_key_id = ?, fallback_key = ?,"
                    " fallback_signature = ? WHERE device_id = ?",
                    (fallback.key_id, fallback.key, fallback.signature, device_id),
                )
            counts = _key_counts(conn, device_id)
            if counts.one_time_keys > max_otks:
                raise ProtocolError(ErrorCode.TOO_MANY_KEYS, "too many one-time keys stored")
            return counts

        return await self._call(run)

    async def claim_key(self, device_id: bytes, one_time: bool = True) -> SignedKey | None:
        def run(conn: sqlite3.Connection) -> SignedKey | None:
            # One statement, on the only writer: no two claims can return the same key.
            row = None
            if one_time:
                row = conn.execute(
                    "DELETE FROM one_time_keys WHERE id = (SELECT id FROM one_time_keys"
                    " WHERE device_id = ? ORDER BY id LIMIT 1)"
                    " RETURNING key_id, key, signature",
                    (device_id,),
                ).fetchone()
            if row is not None:
                return SignedKey(key_id=row[0], key=row[1], signature=row[2], fallback=False)
            row = conn.execute(
                "SELECT fallback_key_id, fallback_key, fallback_signature FROM devices"
                " WHERE device_id = ? AND fallback_key IS NOT NULL",
                (device_id,),
            ).fetchone()
            if row is None:
                return None
            return SignedKey(key_id=row[0], key=row[1], signature=row[2], fallback=True)

        return await self._call(run)

    async def key_counts(self, device_id: bytes) -> KeyCounts:
        return await self._read(lambda conn: _key_counts(conn, device_id))

    # -- tokens -------------------------------------------------------------------------

    async def add_token(self, user_key: bytes, token_hash: bytes) -> None:
        max_tokens = self._max_tokens

        def run(conn: sqlite3.Connection) -> None:
            row = conn.execute(
                "SELECT user_key FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            if row is not None:
                if row[0] != user_key:
                    raise ProtocolError(ErrorCode.CONFLICT, "token is taken")
                return
            (count,) = conn.execute(
                "SELECT count(*) FROM tokens WHERE user_key = ?", (user_key,)
            ).fetchone()
            if count >= max_tokens:
                raise ProtocolError(ErrorCode.QUOTA, "too many delivery tokens")
            conn.execute("INSERT INTO tokens VALUES (?, ?)", (token_hash, user_key))

        await self._write_uncached(run)

    async def revoke_token(self, user_key: bytes, token_hash: bytes) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "DELETE FROM tokens WHERE token_hash = ? AND user_key = ?", (token_hash, user_key)
            )
            return cur.rowcount > 0

        return await self._write_uncached(run)

    async def user_for_token(self, token_hash: bytes) -> bytes | None:
        cached = self._token_users.get(token_hash)
        if cached is not None:
            return cached
        generation = self._token_users.generation

        def run(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute(
                "SELECT user_key FROM tokens WHERE token_hash = ?", (token_hash,)
            ).fetchone()
            return None if row is None else bytes(row[0])

        user_key = await self._read(run)
        if user_key is not None:  # unknown tokens are not memoised: guessing fills nothing
            self._token_users.put(token_hash, user_key, generation)
        return user_key

    async def fanout_targets(
        self, token_hashes: Sequence[bytes]
    ) -> dict[bytes, tuple[bytes, frozenset[bytes]]]:
        # Memoised answers first; whatever is missing is read in one reader job.
        token_users, user_devices = self._token_users, self._user_devices
        found, missing = memoised_targets(token_hashes, token_users, user_devices)
        if not missing:
            return found
        generations = (token_users.generation, user_devices.generation)

        def run(conn: sqlite3.Connection) -> dict[bytes, tuple[bytes, frozenset[bytes]]]:
            owners: dict[bytes, bytes] = {}
            for i in range(0, len(missing), _IN_CHUNK):
                chunk = missing[i : i + _IN_CHUNK]
                owners.update(
                    (bytes(row[0]), bytes(row[1]))
                    for row in conn.execute(
                        "SELECT token_hash, user_key FROM tokens WHERE token_hash IN"
                        f" ({','.join('?' * len(chunk))})",
                        chunk,
                    )
                )
            users = list(set(owners.values()))
            devices: dict[bytes, set[bytes]] = {user_key: set() for user_key in users}
            for i in range(0, len(users), _IN_CHUNK):
                chunk = users[i : i + _IN_CHUNK]
                for row in conn.execute(
                    "SELECT user_key, device_id FROM devices WHERE user_key IN"
                    f" ({','.join('?' * len(chunk))})",
                    chunk,
                ):
                    devices[bytes(row[0])].add(bytes(row[1]))
            frozen = {user_key: frozenset(ids) for user_key, ids in devices.items()}
            return {token_hash: (owner, frozen[owner]) for token_hash, owner in owners.items()}

        read = await self._read(run)
        for token_hash, (user_key, devices) in read.items():
            token_users.put(token_hash, user_key, generations[0])
            user_devices.put(user_key, devices, generations[1])
        found.update(read)
        return found

    # -- mailboxes ----------------------------------------------------------------------

    async def deposit(self, items: Sequence[DepositItem], now_ms: int) -> DepositResult:
        max_mailbox = self._max_mailbox
        items = list(items)
        # A body that several items share (one object: a fan-out) is stored once.
        shared = shared_bodies(items)

        def run(conn: sqlite3.Connection) -> tuple[DepositResult, list[_Stored]]:
            stored = duplicates = 0
            news: dict[bytes, int] = {}
            entries: list[_Stored] = []
            # id(body) -> [bodies.id, entries pointing at it]
            body_rows: dict[int, list[int]] = {}
            for item in items:
                cur = conn.execute(INSERT_MSG_ID, (item.device_id, item.msg_id, now_ms))
                if cur.rowcount == 0:
                    duplicates += 1
                    continue
                # One statement takes the next seq (creating the mailbox if need be).
                seq, size = conn.execute(NEXT_SEQ, (item.device_id,)).fetchone()
                if size > max_mailbox:
                    # Raising rolls back this whole deposit (its SAVEPOINT), nothing else.
                    raise ProtocolError(ErrorCode.QUOTA, "mailbox is full")
                if shared and id(item.body) in shared:
                    row = body_rows.get(id(item.body))
                    if row is None:
                        (body_id,) = conn.execute(
                            "INSERT INTO bodies (body, refs) VALUES (?, 0) RETURNING id",
                            (item.body,),
                        ).fetchone()
                        row = body_rows[id(item.body)] = [body_id, 0]
                    row[1] += 1
                    conn.execute(
                        "INSERT INTO mailbox_entries"
                        " (device_id, seq, msg_id, body, received_at, expires_at, body_id)"
                        " VALUES (?, ?, ?, X'', ?, ?, ?)",
                        (item.device_id, seq, item.msg_id, now_ms, item.expires_at, row[0]),
                    )
                else:
                    conn.execute(
                        INSERT_ENTRY,
                        (item.device_id, seq, item.msg_id, item.body, now_ms, item.expires_at),
                    )
                news[item.device_id] = seq
                stored += 1
                entries.append((item.device_id, MailboxEntry(seq, item.msg_id, item.body, now_ms)))
            if body_rows:
                conn.executemany(
                    "UPDATE bodies SET refs = ? WHERE id = ?",
                    [(refs, body_id) for body_id, refs in body_rows.values()],
                )
            return DepositResult(stored=stored, duplicates=duplicates, news=news), entries

        def committed(outcome: tuple[DepositResult, list[_Stored]]) -> None:
            try:
                for device_id, entry in outcome[1]:
                    self._recent.added(device_id, entry)
            except Exception:  # a bug here must neither strand the callers nor leave it stale
                _log.exception("recent entries update failed")
                self._recent.clear()

        result, _ = await self._call(run, committed)
        return result

    async def fetch(self, device_id: bytes, after: int, limit: int) -> list[MailboxEntry]:
        recent = self._recent.fetch(device_id, after, limit)
        if recent is not None:
            return recent

        def run(conn: sqlite3.Connection) -> list[MailboxEntry]:
            rows = conn.execute(
                "SELECT e.seq, e.msg_id, coalesce(b.body, e.body), e.received_at"
                " FROM mailbox_entries e LEFT JOIN bodies b ON b.id = e.body_id"
                " WHERE e.device_id = ? AND e.seq > ? ORDER BY e.seq LIMIT ?",
                (device_id, after, limit),
            )
            return [MailboxEntry(seq=r[0], msg_id=r[1], body=r[2], received_at=r[3]) for r in rows]

        return await self._read(run)

    async def ack(self, device_id: bytes, up_to: int, now_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            cur = conn.execute(DELETE_ACKED, (device_id, up_to))
            deleted = cur.rowcount
            if deleted:
                conn.execute(SHRINK_MAILBOX, (deleted, device_id))
            cutoff = self._msg_id_sweeps.cutoff(device_id, now_ms)
            if cutoff is not None:
                conn.execute(
                    "DELETE FROM msg_ids WHERE device_id = ? AND at < ?", (device_id, cutoff)
                )
            return deleted

        def committed(_deleted: int) -> None:
            try:
                self._recent.acked(device_id, up_to)
            except Exception:  # as in deposit()
                _log.exception("recent entries update failed")
                self._recent.clear()

        return await self._call(run, committed, durable=False)

    async def expire(self, before_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            counts = conn.execute(
                "SELECT device_id, COUNT(*) FROM mailbox_entries WHERE received_at < ?"
                " GROUP BY device_id",
                (before_ms,),
            ).fetchall()
            if not counts:
                return 0
            conn.execute("DELETE FROM mailbox_entries WHERE received_at < ?", (before_ms,))
            conn.executemany(
                "UPDATE mailboxes SET size = size - ? WHERE device_id = ?",
                [(n, device_id) for device_id, n in counts],
            )
            return sum(int(n) for _, n in counts)

        return await self._call(run)

    async def expire_timed(self, now_ms: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                "DELETE FROM mailbox_entries WHERE expires_at <= ? RETURNING device_id",
                (now_ms,),
            ).fetchall()
            counts = Counter(bytes(r[0]) for r in rows)
            conn.executemany(
                "UPDATE mailboxes SET size = size - ? WHERE device_id = ?",
                [(n, device_id) for device_id, n in counts.items()],
            )
            return len(rows)

        removed = await self._call(run)
        if removed:
            await asyncio.to_thread(self._scrub_wal)
        return removed

    def _scrub_wal(self) -> None:
        """Copy the WAL back and empty it, so older page images of deleted rows go too."""
        conn = sqlite3.connect(self._path, isolation_level=None, timeout=5.0)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()

    async def mailbox_size(self, device_id: bytes) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT size FROM mailboxes WHERE device_id = ?", (device_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(run)

    async def last_seq(self, device_id: bytes) -> int:
        def run(conn: sqlite3.Connection) -> int:
            row = conn.execute(
                "SELECT last_seq FROM mailboxes WHERE device_id = ?", (device_id,)
            ).fetchone()
            return 0 if row is None else int(row[0])

        return await self._read(run)


def _key_counts(conn: sqlite3.Connection, device_id: bytes) -> KeyCounts:
    (count,) = conn.execute(
        "SELECT count(*) FROM one_time_keys WHERE device_id = ?", (device_id,)
    ).fetchone()
    row = conn.execute(
        "SELECT fallback_key IS NOT NULL FROM devices WHERE device_id = ?", (device_id,)
    ).fetchone()
    return KeyCounts(one_time_keys=int(count), has_fallback_key=bool(row and row[0]))


def _forget_unlisted(conn: sqlite3.Connection, user_key: bytes, listed: set[bytes]) -> None:
    """Drop registered devices that a newer device list no longer names."""
    rows = conn.execute("SELECT device_id FROM devices WHERE user_key = ?", (user_key,))
    for (device_id,) in rows.fetchall():
        if device_id in listed:
            continue
        conn.execute("DELETE FROM devices WHERE device_id = ?", (device_id,))
        conn.execute("DELETE FROM one_time_keys WHERE device_id = ?", (device_id,))
        # Entries nobody can consume any more go; the seq counter stays (never reused).
        conn.execute("DELETE FROM mailbox_entries WHERE device_id = ?", (device_id,))
        conn.execute("UPDATE mailboxes SET size = 0 WHERE device_id = ?", (device_id,))


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration] = MIGRATIONS) -> int:
    """Apply the migrations newer than the database's version; returns the version now.

    Tests pass a prefix of the chain to build a database as an older release made it.
    """
    conn.execute(SCHEMA_VERSION_TABLE)
    (current,) = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
    for migration in migrations:
        if migration.version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in migration.statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version VALUES (?, ?)",
                (migration.version, int(time.time() * 1000)),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        current = migration.version
        _log.info("store schema migrated to version %d", migration.version)
    return int(current)
