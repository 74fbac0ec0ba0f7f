"""The client's local store: one SQLite file in which every value is encrypted (DESIGN §8).

Layout (``home/store.sqlite``)::

    meta(name TEXT PRIMARY KEY, value BLOB)   salt, KDF parameters, verifier (not secret)
    records(kind TEXT, lookup BLOB, value BLOB, PRIMARY KEY (kind, lookup))
    log(id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT, lookup BLOB, value BLOB)

``kind`` is a fixed label ("contact", "session", ...); ``lookup`` is an HMAC of the
name the caller looks a record up by (a contact name, a key) and ``value`` is
AES-256-GCM bound to both (crypto/at_rest.py). Nothing the user typed, no key and no
server link is stored in clear.

Several processes may share a home (``listen`` in one, ``send`` in another): SQLite
serialises writes, and :meth:`Store.locked` takes an ``flock`` on ``home/lock`` around
read-modify-write of Olm state, so that two processes never advance a ratchet from the
same snapshot. The lock is held for milliseconds, never across network I/O.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from samizdat.crypto.at_rest import NONCE_SIZE, SALT_SIZE, AtRestKey, KdfParams
from samizdat.errors import LocalError, NotFound, StoreLocked

__all__ = ["STORE_FILE", "LOCK_FILE", "Store"]

STORE_FILE = "store.sqlite"
LOCK_FILE = "lock"
_LOCK_TIMEOUT = 10.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, lookup BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY (kind, lookup)
);
CREATE TABLE IF NOT EXISTS log (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, lookup BLOB NOT NULL,
    value BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS log_lookup ON log (kind, lookup, id);
"""


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    return conn


class Store:
    """An open, unlocked store. Holds the derived keys; never shows them."""

    __slots__ = ("_conn", "_key", "_lock_path", "_lock_depth", "_lock_fd")

    def __init__(self, conn: sqlite3.Connection, key: AtRestKey, lock_path: Path) -> None:
        self._conn = conn
        self._key = key
        self._lock_path = lock_path
        self._lock_depth = 0
        self._lock_fd: int | None = None

    @staticmethod
    def exists(home: Path) -> bool:
        return (home / STORE_FILE).exists()

    @classmethod
    def create(cls, home: Path, passphrase: str, params: KdfParams | None = None) -> Store:
        """Make a new store in ``home`` (created if missing, mode 0700).

        Raises:
            LocalError: a store already exists there.
        """
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = home / STORE_FILE
        if path.exists():
            raise LocalError("a samizdat identity already exists in this home folder")
        params = params or KdfParams()
        salt = secrets.token_bytes(SALT_SIZE)
        key = AtRestKey.derive(passphrase, salt, params)
        conn = _connect(path)
        os.chmod(path, 0o600)
        conn.executescript(_SCHEMA)
        kdf = json.dumps(
            {
                "memory_kib": params.memory_kib,
                "iterations": params.iterations,
                "lanes": params.lanes,
            }
        ).encode()
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(
                "INSERT INTO meta (name, value) VALUES (?, ?)",
                [
                    ("salt", salt),
                    ("kdf", kdf),
                    ("verifier", key.make_verifier(secrets.token_bytes(NONCE_SIZE))),
                ],
            )
        return cls(conn, key, home / LOCK_FILE)

    @classmethod
    def open(cls, home: Path, passphrase: str) -> Store:
        """Open an existing store.

        Raises:
            NotFound: no store in ``home``.
            WrongPassphrase: the passphrase does not open it.
        """
        path = home / STORE_FILE
        if not path.exists():
            raise NotFound("no samizdat identity in this home folder (run `samizdat init`)")
        conn = _connect(path)
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta").fetchall())
            raw = json.loads(meta["kdf"])
            params = KdfParams(int(raw["memory_kib"]), int(raw["iterations"]), int(raw["lanes"]))
            key = AtRestKey.derive(passphrase, bytes(meta["salt"]), params)
            key.check_verifier(bytes(meta["verifier"]))
        except (KeyError, ValueError, sqlite3.DatabaseError) as exc:
            conn.close()
            raise LocalError("the local store is damaged") from exc
        except BaseException:
            conn.close()
            raise
        return cls(conn, key, home / LOCK_FILE)

    def close(self) -> None:
        self._conn.close()

    @property
    def pickle_key(self) -> bytes:
        return self._key.pickle_key

    # -- records -------------------------------------------------------------------

    def get(self, kind: str, name: bytes | str) -> bytes | None:
        """The decrypted value of the record ``kind``/``name``, or None."""
        lookup = self._key.lookup_id(kind, name)
        row = self._conn.execute(
            "SELECT value FROM records WHERE kind = ? AND lookup = ?", (kind, lookup)
        ).fetchone()
        if row is None:
            return None
        return self._key.decrypt(kind, lookup, bytes(row[0]))

    def put(self, kind: str, name: bytes | str, value: bytes) -> None:
        lookup = self._key.lookup_id(kind, name)
        blob = self._key.encrypt(kind, lookup, value, secrets.token_bytes(NONCE_SIZE))
        self._conn.execute(
            "INSERT INTO records (kind, lookup, value) VALUES (?, ?, ?) "
            "ON CONFLICT (kind, lookup) DO UPDATE SET value = excluded.value",
            (kind, lookup, blob),
        )

    def delete(self, kind: str, name: bytes | str) -> None:
        lookup = self._key.lookup_id(kind, name)
        self._conn.execute("DELETE FROM records WHERE kind = ? AND lookup = ?", (kind, lookup))

    def values(self, kind: str) -> list[bytes]:
        """Every value of ``kind``, in no particular order."""
        rows = self._conn.execute("SELECT lookup, value FROM records WHERE kind = ?", (kind,))
        return [self._key.decrypt(kind, bytes(lookup), bytes(value)) for lookup, value in rows]

    # -- append-only logs (history) ------------------------------------------------

    def append(self, kind: str, name: bytes | str, value: bytes) -> None:
        lookup = self._key.lookup_id(kind, name)
        blob = self._key.encrypt(kind, lookup, value, secrets.token_bytes(NONCE_SIZE))
        self._conn.execute(
            "INSERT INTO log (kind, lookup, value) VALUES (?, ?, ?)", (kind, lookup, blob)
        )

    def read_log(self, kind: str, name: bytes | str) -> list[bytes]:
        """Values appended under ``kind``/``name``, oldest first."""
        lookup = self._key.lookup_id(kind, name)
        rows = self._conn.execute(
            "SELECT value FROM log WHERE kind = ? AND lookup = ? ORDER BY id", (kind, lookup)
        )
        return [self._key.decrypt(kind, lookup, bytes(value)) for (value,) in rows]

    def read_log_rows(self, kind: str, name: bytes | str) -> list[tuple[int, bytes]]:
        """As :meth:`read_log`, with each row's id (for :meth:`delete_log_rows`)."""
        lookup = self._key.lookup_id(kind, name)
        rows = self._conn.execute(
            "SELECT id, value FROM log WHERE kind = ? AND lookup = ? ORDER BY id", (kind, lookup)
        )
        return [(int(i), self._key.decrypt(kind, lookup, bytes(value))) for i, value in rows]

    def delete_log_rows(self, ids: list[int]) -> None:
        """Delete log rows by id: disappearing and deleted-for-everyone messages."""
        self._conn.executemany("DELETE FROM log WHERE id = ?", [(i,) for i in ids])

    def scrub(self) -> None:
        """Push deleted rows out of the write-ahead log (call outside a transaction).

        ``secure_delete`` zeroes a deleted row in the database file, but the WAL still
        holds older copies of its pages until a checkpoint; TRUNCATE copies them back and
        empties the WAL file, so a deleted message leaves no bytes on disk.
        """
        self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- transactions and the inter-process lock -------------------------------------

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the home's ``flock`` (re-entrant within this Store) and a transaction.

        Raises:
            StoreLocked: another process held the lock for more than 10 seconds.
        """
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + _LOCK_TIMEOUT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise StoreLocked("the local store is busy in another process") from None
                time.sleep(0.005)
        self._lock_fd = fd
        self._lock_depth = 1
        try:
            with self.transaction():
                yield
        finally:
            self._lock_depth = 0
            self._lock_fd = None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __repr__(self) -> str:
        return "Store(<encrypted>)"
