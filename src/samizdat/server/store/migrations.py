"""Numbered schema migrations for the SQLite store.

Each migration is applied once, in order, inside one transaction, and recorded in
``schema_version``. A released migration is never edited; a change is a new number.
The schema keeps every mailbox table keyed by device id first, so the PostgreSQL chain
(``pg_migrations.py``) follows with the same numbers (BLOB -> BYTEA, INTEGER PRIMARY
KEY -> an identity column) and can be partitioned by device (docs/scaling.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Migration", "MIGRATIONS", "SCHEMA_VERSION_TABLE"]


@dataclass(frozen=True)
class Migration:
    version: int
    statements: tuple[str, ...]


SCHEMA_VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    " version INTEGER PRIMARY KEY,"
    " applied_at INTEGER NOT NULL)"
)

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            # The latest verified device list of each user.
            """CREATE TABLE users (
                user_key BLOB PRIMARY KEY,
                list_version INTEGER NOT NULL,
                list_body BLOB NOT NULL,
                list_signature BLOB NOT NULL
            )""",
            """CREATE TABLE devices (
                device_id BLOB PRIMARY KEY,
                user_key BLOB NOT NULL,
                signing_key BLOB NOT NULL,
                identity_key BLOB NOT NULL,
                sealing_key BLOB NOT NULL,
                fallback_key_id TEXT,
                fallback_key BLOB,
                fallback_signature BLOB
            )""",
            "CREATE INDEX devices_by_user ON devices (user_key)",
            # A rowid table so that claims hand keys out in upload order.
            """CREATE TABLE one_time_keys (
                id INTEGER PRIMARY KEY,
                device_id BLOB NOT NULL,
                key_id TEXT NOT NULL,
                key BLOB NOT NULL,
                signature BLOB NOT NULL,
                UNIQUE (device_id, key_id)
            )""",
            # SHA-256 of each delivery token; tokens themselves are never stored.
            """CREATE TABLE tokens (
                token_hash BLOB PRIMARY KEY,
                user_key BLOB NOT NULL
            )""",
            "CREATE INDEX tokens_by_user ON tokens (user_key)",
            # The seq counter outlives every entry, so a seq is never reused.
            """CREATE TABLE mailboxes (
                device_id BLOB PRIMARY KEY,
                last_seq INTEGER NOT NULL,
                size INTEGER NOT NULL
            )""",
            """CREATE TABLE mailbox_entries (
                device_id BLOB NOT NULL,
                seq INTEGER NOT NULL,
                msg_id BLOB NOT NULL,
                body BLOB NOT NULL,
                received_at INTEGER NOT NULL,
                PRIMARY KEY (device_id, seq)
            ) WITHOUT ROWID""",
            # Every msg_id deposited, kept for MSG_ID_RETENTION_MS even after its entry is
            # acknowledged, so a late retry is still a duplicate (rather than tombstones).
            """CREATE TABLE msg_ids (
                device_id BLOB NOT NULL,
                msg_id BLOB NOT NULL,
                at INTEGER NOT NULL,
                PRIMARY KEY (device_id, msg_id)
            ) WITHOUT ROWID""",
            "CREATE INDEX msg_ids_by_age ON msg_ids (device_id, at)",
        ),
    ),
    Migration(
        2,
        (
            # claim_key takes a device's oldest key: without this index it sorts all of
            # that device's keys (up to MAX_STORED_ONE_TIME_KEYS) on every claim.
            "CREATE INDEX one_time_keys_by_device ON one_time_keys (device_id, id)",
        ),
    ),
    Migration(
        3,
        (
            # Disappearing messages (protocol §6.2): the envelope's own expiry, if any.
            "ALTER TABLE mailbox_entries ADD COLUMN expires_at INTEGER",
            "CREATE INDEX mailbox_entries_by_expiry ON mailbox_entries (expires_at)"
            " WHERE expires_at IS NOT NULL",
        ),
    ),
    Migration(
        4,
        (
            # A fanned-out body (protocol §5.3.10) is stored once: its entries hold an
            # empty body and its id. ``refs`` counts the entries that still point at it;
            # the trigger drops the body with the last one, whichever path deletes it
            # (ack, time to live, envelope expiry, device removal).
            """CREATE TABLE bodies (
                id INTEGER PRIMARY KEY,
                body BLOB NOT NULL,
                refs INTEGER NOT NULL
            )""",
            "ALTER TABLE mailbox_entries ADD COLUMN body_id INTEGER",
            """CREATE TRIGGER mailbox_entries_release_body AFTER DELETE ON mailbox_entries
            WHEN OLD.body_id IS NOT NULL BEGIN
                UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
                DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0;
            END""",
        ),
    ),
    Migration(
        5,
        (
            # mailbox_entries as a rowid table: a WITHOUT ROWID table keeps its rows in an
            # index b-tree, where a cell holds at most ~1,000 bytes of a 4 KiB page, so every
            # entry with a 1 KiB body spilled into an overflow page of its own, which its
            # insert allocated, its delete freed and zeroed (secure_delete) and the release
            # trigger read back: SQLite's statements per envelope took about twice the time
            # (docs/performance.md, "Fifth round"). Rows are copied in key order; the old
            # table's trigger goes first so that dropping the table releases no body.
            "DROP TRIGGER mailbox_entries_release_body",
            """CREATE TABLE mailbox_entries_v5 (
                id INTEGER PRIMARY KEY,
                device_id BLOB NOT NULL,
                seq INTEGER NOT NULL,
                msg_id BLOB NOT NULL,
                body BLOB NOT NULL,
                received_at INTEGER NOT NULL,
                expires_at INTEGER,
                body_id INTEGER,
                UNIQUE (device_id, seq)
            )""",
            "INSERT INTO mailbox_entries_v5"
            " (device_id, seq, msg_id, body, received_at, expires_at, body_id)"
            " SELECT device_id, seq, msg_id, body, received_at, expires_at, body_id"
            " FROM mailbox_entries ORDER BY device_id, seq",
            "DROP TABLE mailbox_entries",
            "ALTER TABLE mailbox_entries_v5 RENAME TO mailbox_entries",
            "CREATE INDEX mailbox_entries_by_expiry ON mailbox_entries (expires_at)"
            " WHERE expires_at IS NOT NULL",
            """CREATE TRIGGER mailbox_entries_release_body AFTER DELETE ON mailbox_entries
            WHEN OLD.body_id IS NOT NULL BEGIN
                UPDATE bodies SET refs = refs - 1 WHERE id = OLD.body_id;
                DELETE FROM bodies WHERE id = OLD.body_id AND refs <= 0;
            END""",
        ),
    ),
    # PostgreSQL's 6 records each mailbox's acknowledged seq, below which its acks need
    # not look (its deleted rows linger until vacuum). SQLite removes a deleted row from
    # its b-tree at once: nothing to change; the number stays so that both chains count
    # alike.
    Migration(6, ()),
)
