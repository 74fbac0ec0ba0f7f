"""Schema of the blob store: its own numbered chain, for SQLite and PostgreSQL.

Blobs live apart from mailboxes (their own SQLite file, their own tables and version
table in PostgreSQL), so this chain is numbered on its own and never collides with
``store/migrations.py``. A released migration is never edited.
"""

from __future__ import annotations

from samizdat.server.store.migrations import Migration

__all__ = ["BLOB_MIGRATIONS", "PG_BLOB_MIGRATIONS"]

BLOB_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE blobs (
                blob_id BLOB PRIMARY KEY,
                owner BLOB NOT NULL,
                size INTEGER NOT NULL,
                received INTEGER NOT NULL,
                read_hash BLOB NOT NULL,
                expires_at INTEGER NOT NULL,
                created_at INTEGER NOT NULL
            )""",
            "CREATE INDEX blobs_by_owner ON blobs (owner, expires_at)",
            "CREATE INDEX blobs_by_expiry ON blobs (expires_at)",
            # A rowid table: rows are ~128 KiB, too large for WITHOUT ROWID to pay.
            """CREATE TABLE blob_chunks (
                blob_id BLOB NOT NULL,
                idx INTEGER NOT NULL,
                data BLOB NOT NULL,
                UNIQUE (blob_id, idx)
            )""",
        ),
    ),
)

PG_BLOB_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE blobs (
                blob_id BYTEA PRIMARY KEY,
                owner BYTEA NOT NULL,
                size BIGINT NOT NULL,
                received BIGINT NOT NULL,
                read_hash BYTEA NOT NULL,
                expires_at BIGINT NOT NULL,
                created_at BIGINT NOT NULL
            )""",
            "CREATE INDEX blobs_by_owner ON blobs (owner, expires_at)",
            "CREATE INDEX blobs_by_expiry ON blobs (expires_at)",
            """CREATE TABLE blob_chunks (
                blob_id BYTEA NOT NULL,
                idx BIGINT NOT NULL,
                data BYTEA NOT NULL,
                PRIMARY KEY (blob_id, idx)
            )""",
            # Ciphertext does not compress: skip TOAST's attempt, store out of line.
            "ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL",
        ),
    ),
)
