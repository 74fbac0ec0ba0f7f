"""Numbered schema migrations for the PostgreSQL store, numbered like the SQLite chain.

Version N here makes the same tables and indexes as version N of ``migrations.py``, in
PostgreSQL types. Every mailbox table has ``device_id`` first in its primary key, so
each can be hash-partitioned or sharded by device without changing a query: every
statement on them names one device (docs/scaling.md); ``bodies`` (4: a fan-out's body,
stored once) is keyed by its own id. A released migration is never edited; a change is a
new number in both chains.
"""

from __future__ import annotations

from samizdat.server.store.migrations import Migration

__all__ = ["PG_MIGRATIONS"]


PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE users (
                user_key BYTEA PRIMARY KEY,
                list_version BIGINT NOT NULL,
                list_body BYTEA NOT NULL,
                list_signature BYTEA NOT NULL
            )""",
            """CREATE TABLE devices (
                device_id BYTEA PRIMARY KEY,
                user_key BYTEA NOT NULL,
                signing_key BYTEA NOT NULL,
                identity_key BYTEA NOT NULL,
                sealing_key BYTEA NOT NULL,
                fallback_key_id TEXT,
                fallback_key BYTEA,
                fallback_signature BYTEA
            )""",
            "CREATE INDEX devices_by_user ON devices (user_key)",
            # An identity column so that claims hand keys out in upload order.
            """CREATE TABLE one_time_keys (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                device_id BYTEA NOT NULL,
                key_id TEXT NOT NULL,
                key BYTEA NOT NULL,
                signature BYTEA NOT NULL,
                UNIQUE (device_id, key_id)
            )""",
            """CREATE TABLE tokens (
                token_hash BYTEA PRIMARY KEY,
                user_key BYTEA NOT NULL
            )""",
            "CREATE INDEX tokens_by_user ON tokens (user_key)",
            # The row is also the per-mailbox lock: a deposit's UPDATE serialises seqs.
            """CREATE TABLE mailboxes (
                device_id BYTEA PRIMARY KEY,
                last_seq BIGINT NOT NULL,
                size BIGINT NOT NULL
            )""",
            """CREATE TABLE mailbox_entries (
                device_id BYTEA NOT NULL,
                seq BIGINT NOT NULL,
                msg_id BYTEA NOT NULL,
                body BYTEA NOT NULL,
                received_at BIGINT NOT NULL,
                PRIMARY KEY (device_id, seq)
            )""",
            """CREATE TABLE msg_ids (
                device_id BYTEA NOT NULL,
                msg_id BYTEA NOT NULL,
                at BIGINT NOT NULL,
                PRIMARY KEY (device_id, msg_id)
            )""",
            "CREATE INDEX msg_ids_by_age ON msg_ids (device_id, at)",
        ),
    ),
    Migration(
        2,
        ("CREATE INDEX one_time_keys_by_device ON one_time_keys (device_id, id)",),
    ),
    Migration(
        3,
        (
            "ALTER TABLE mailbox_entries ADD COLUMN expires_at BIGINT",
            "CREATE INDEX mailbox_entries_by_expiry ON mailbox_entries (expires_at)"
            " WHERE expires_at IS NOT NULL",
        ),
    ),
    Migration(
        4,
        (
            # As in SQLite: a fanned-out body once, dropped with the last entry that points
            # at it. One statement-level trigger per DELETE; it locks the bodies in id
            # order, so two deletes sharing bodies cannot deadlock on them.
            """CREATE TABLE bodies (
                id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                body BYTEA NOT NULL,
                refs BIGINT NOT NULL
            )""",
            "ALTER TABLE mailbox_entries ADD COLUMN body_id BIGINT",
            """CREATE FUNCTION release_bodies() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM 1 FROM bodies WHERE id IN (SELECT body_id FROM gone)
                    ORDER BY id FOR UPDATE;
                UPDATE bodies b SET refs = b.refs - g.n
                FROM (SELECT body_id, count(*) AS n FROM gone
                      WHERE body_id IS NOT NULL GROUP BY body_id) g
                WHERE b.id = g.body_id;
                DELETE FROM bodies WHERE id IN (SELECT body_id FROM gone) AND refs <= 0;
                RETURN NULL;
            END $$""",
            """CREATE TRIGGER mailbox_entries_release_bodies AFTER DELETE ON mailbox_entries
            REFERENCING OLD TABLE AS gone
            FOR EACH STATEMENT EXECUTE FUNCTION release_bodies()""",
        ),
    ),
    # SQLite's 5 rebuilt mailbox_entries as a rowid table (its 1 KiB rows overflowed a
    # WITHOUT ROWID b-tree). A PostgreSQL heap table keeps such rows in its pages already:
    # nothing to change; the number stays so that both chains count alike.
    Migration(5, ()),
    # Every seq at or below ``acked`` was acknowledged and its entry deleted, so an ack
    # deletes from there up, not from the device's first seq: a deleted row stays in the
    # heap and its index until vacuum, and a range over those cost every ack a walk over
    # all of them (a drained backlog of thousands made each ack several times dearer).
    Migration(6, ("ALTER TABLE mailboxes ADD COLUMN acked BIGINT NOT NULL DEFAULT 0",)),
)
