"""SQLite's own statements per envelope, on the schema as each migration left it.

The store's statements for one envelope (the strings ``server/store/sqlite.py`` runs): the
msg_id row, the mailbox counter, the entry; then the acknowledgement's delete and counter
update. They run in a bare ``sqlite3`` loop, with no session, event loop or network: 50
devices, ``--body``-byte bodies, ten envelopes per transaction, each envelope acknowledged
right after the next one is deposited. Every schema version given (``--versions``; built
with the migrations up to it, with the store's pragmas: WAL, ``secure_delete``, foreign
keys) runs in the same process, interleaved in rounds of ``--round`` envelopes, so that this
VM's drifting speed hits them alike; prints the median µs per statement and per envelope
over the rounds, and the WAL pages each envelope wrote. ``synchronous=OFF`` and no
checkpoints: the figure is the statements' CPU, not the disk's.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from samizdat.server.store.migrations import MIGRATIONS
from samizdat.server.store.sqlite import (
    DELETE_ACKED,
    INSERT_ENTRY,
    INSERT_MSG_ID,
    NEXT_SEQ,
    SHRINK_MAILBOX,
    migrate,
)

_DEVICES = 50
_PER_COMMIT = 10
_STEPS = ("msg_id", "counter", "entry", "ack", "ack counter")
_WAL_FRAME = 24 + 4096


class _Schema:
    def __init__(self, version: int, directory: Path, body: int) -> None:
        self.version = version
        self.path = directory / f"v{version}.db"
        conn = self.conn = sqlite3.connect(self.path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA secure_delete=ON")
        migrate(conn, [m for m in MIGRATIONS if m.version <= version])
        self.devices = [os.urandom(16) for _ in range(_DEVICES)]
        self.body = os.urandom(body)
        self.count = 0
        self.micros: dict[str, list[float]] = {step: [] for step in (*_STEPS, "envelope")}
        self.pages: list[float] = []

    def run(self, envelopes: int) -> None:
        conn = self.conn
        spent = dict.fromkeys(_STEPS, 0.0)
        wal = Path(f"{self.path}-wal")
        wal_before = wal.stat().st_size if wal.exists() else 0
        unacked: tuple[bytes, int] | None = None
        conn.execute("BEGIN IMMEDIATE")
        for _ in range(envelopes):
            self.count += 1
            device = self.devices[self.count % _DEVICES]
            now = self.count
            t0 = time.perf_counter()
            conn.execute(INSERT_MSG_ID, (device, os.urandom(16), now))
            t1 = time.perf_counter()
            seq, _size = conn.execute(NEXT_SEQ, (device,)).fetchone()
            t2 = time.perf_counter()
            conn.execute(INSERT_ENTRY, (device, seq, os.urandom(16), self.body, now, None))
            t3 = time.perf_counter()
            spent["msg_id"] += t1 - t0
            spent["counter"] += t2 - t1
            spent["entry"] += t3 - t2
            if unacked is not None:
                acked_device, up_to = unacked
                t4 = time.perf_counter()
                deleted = conn.execute(DELETE_ACKED, (acked_device, up_to)).rowcount
                t5 = time.perf_counter()
                conn.execute(SHRINK_MAILBOX, (deleted, acked_device))
                spent["ack"] += t5 - t4
                spent["ack counter"] += time.perf_counter() - t5
            unacked = (device, seq)
            if self.count % _PER_COMMIT == 0:
                conn.execute("COMMIT")
                conn.execute("BEGIN IMMEDIATE")
        conn.execute("COMMIT")
        self.pages.append((wal.stat().st_size - wal_before) / _WAL_FRAME / envelopes)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for step, seconds in spent.items():
            self.micros[step].append(seconds / envelopes * 1e6)
        self.micros["envelope"].append(sum(spent.values()) / envelopes * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    latest = MIGRATIONS[-1].version
    parser.add_argument(
        "--versions", default=f"4,{latest}", help="schema versions, comma-separated"
    )
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--round", type=int, default=500, help="envelopes per round")
    parser.add_argument("--body", type=int, default=1024, help="body bytes")
    args = parser.parse_args()
    versions = [int(v) for v in args.versions.split(",")]
    with tempfile.TemporaryDirectory(prefix="samizdat-sqlite-") as tmp:
        schemas = [_Schema(v, Path(tmp), args.body) for v in versions]
        for _ in range(args.rounds):
            for schema in schemas:
                schema.run(args.round)
        print(
            f"SQLite {sqlite3.sqlite_version}; {_DEVICES} devices, {args.body}-byte bodies, "
            f"{_PER_COMMIT} envelopes per transaction; medians of {args.rounds} interleaved "
            f"rounds of {args.round}"
        )
        header = " ".join(f"{step:>11}" for step in (*_STEPS, "envelope"))
        print(f"{'schema':>7} {header} {'WAL pages':>10}  (µs per envelope)")
        for schema in schemas:
            cells = " ".join(
                f"{statistics.median(schema.micros[step]):>11.1f}" for step in (*_STEPS, "envelope")
            )
            print(
                f"{'v' + str(schema.version):>7} {cells} {statistics.median(schema.pages):>10.2f}"
            )
            schema.conn.close()


if __name__ == "__main__":
    main()
