"""Store conformance suite: every Store implementation must pass it (see conftest STORE_KINDS)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from pathlib import Path

import asyncpg
import pytest

from samizdat.errors import ErrorCode, LocalError, ProtocolError
from samizdat.server.store.base import MSG_ID_RETENTION_MS, DepositItem, Store
from samizdat.server.store.postgres import PostgresStore
from samizdat.server.store.sqlite import SqliteStore

from .conftest import StoreFactory
from .helpers import NOW_MS, Device, User, token_hash
from .services import PG_DSN


async def register(store: Store, user: User) -> None:
    for device in user.devices:
        await store.register_device(
            user.user_key,
            user.signed_list(),
            user.version,
            [d.device_id for d in user.devices],
            device.keys,
        )


def item(device_id: bytes, n: int, body: bytes = b"body") -> DepositItem:
    return DepositItem(device_id=device_id, msg_id=n.to_bytes(16, "big"), body=body)


async def test_deposit_fetch_ack(make_store: StoreFactory) -> None:
    store = await make_store()
    dev = os.urandom(16)
    result = await store.deposit([item(dev, i, bytes([i])) for i in range(5)], NOW_MS)
    assert (result.stored, result.duplicates) == (5, 0)
    assert result.news == {dev: 5}
    entries = await store.fetch(dev, 0, 3)
    assert [e.seq for e in entries] == [1, 2, 3]
    assert entries[0].body == b"\x00" and entries[0].received_at == NOW_MS
    assert [e.seq for e in await store.fetch(dev, 3, 10)] == [4, 5]
    assert await store.ack(dev, 2, NOW_MS) == 2
    assert await store.mailbox_size(dev) == 3
    assert [e.seq for e in await store.fetch(dev, 0, 10)] == [3, 4, 5]
    assert await store.fetch(os.urandom(16), 0, 10) == []


async def test_deposit_is_idempotent_across_ack_and_reopen(make_store: StoreFactory) -> None:
    store = await make_store()
    dev = os.urandom(16)
    await store.deposit([item(dev, 1), item(dev, 2)], NOW_MS)
    again = await store.deposit([item(dev, 1), item(dev, 3), item(dev, 3)], NOW_MS)
    assert (again.stored, again.duplicates) == (1, 2)
    await store.ack(dev, 3, NOW_MS)
    assert (await store.deposit([item(dev, 2)], NOW_MS)).duplicates == 1
    await store.close()
    store = await make_store()
    result = await store.deposit([item(dev, 1), item(dev, 2), item(dev, 3)], NOW_MS)
    assert (result.stored, result.duplicates) == (0, 3)
    assert await store.mailbox_size(dev) == 0
    # Same msg_id for another device is a different envelope.
    assert (await store.deposit([item(os.urandom(16), 1)], NOW_MS)).stored == 1


async def test_acks_past_the_last_seq_or_behind_an_earlier_one(make_store: StoreFactory) -> None:
    """An ack names a seq; entries at or below it go. One beyond the mailbox's last seq
    (a buggy or hostile client) must not swallow entries deposited after it, and a stale
    one deletes nothing (PostgreSQL starts each ack above the last one: migration 6)."""
    store = await make_store()
    dev = os.urandom(16)
    await store.deposit([item(dev, 1), item(dev, 2)], NOW_MS)
    assert await store.ack(dev, 100, NOW_MS) == 2
    await store.deposit([item(dev, 3), item(dev, 4), item(dev, 5)], NOW_MS)
    assert [e.seq for e in await store.fetch(dev, 0, 10)] == [3, 4, 5]
    assert await store.ack(dev, 3, NOW_MS) == 1
    assert await store.ack(dev, 2, NOW_MS) == 0
    assert await store.ack(dev, 4, NOW_MS) == 1
    assert await store.mailbox_size(dev) == 1
    assert [e.seq for e in await store.fetch(dev, 0, 10)] == [5]
    # An entry dropped from the middle by its own expiry leaves the next ack exact.
    await store.deposit(
        [DepositItem(dev, (6).to_bytes(16, "big"), b"timed", expires_at=NOW_MS + 1), item(dev, 7)],
        NOW_MS,
    )
    assert await store.expire_timed(NOW_MS + 1) == 1
    assert await store.ack(dev, 7, NOW_MS) == 2
    assert await store.mailbox_size(dev) == 0


async def test_msg_ids_are_forgotten_after_retention(make_store: StoreFactory) -> None:
    store = await make_store()
    dev = os.urandom(16)
    await store.deposit([item(dev, 1)], NOW_MS)
    await store.ack(dev, 1, NOW_MS + MSG_ID_RETENTION_MS + 1)
    assert (await store.deposit([item(dev, 1)], NOW_MS)).stored == 1


async def test_expire_drops_only_entries_past_their_time_to_live(
    make_store: StoreFactory,
) -> None:
    store = await make_store()
    old, fresh = os.urandom(16), os.urandom(16)
    await store.deposit([item(old, 1), item(old, 2), item(fresh, 3)], NOW_MS)
    await store.deposit([item(old, 4)], NOW_MS + 5_000)
    assert await store.expire(NOW_MS + 1_000) == 3
    assert [e.msg_id for e in await store.fetch(old, 0, 10)] == [item(old, 4).msg_id]
    assert await store.mailbox_size(old) == 1 and await store.mailbox_size(fresh) == 0
    assert await store.expire(NOW_MS + 1_000) == 0
    # An expired envelope retried later is still a duplicate, not a new copy.
    assert (await store.deposit([item(old, 1)], NOW_MS + 2_000)).duplicates == 1
    assert await store.last_seq(old) == 3


async def test_expire_timed_drops_entries_at_their_own_expiry(make_store: StoreFactory) -> None:
    """Disappearing messages (protocol §6.2): an envelope's expiry deletes it, and only it."""
    store = await make_store()
    dev = os.urandom(16)
    timed = [
        DepositItem(dev, n.to_bytes(16, "big"), b"timed", expires_at=NOW_MS + 1_000 * n)
        for n in (1, 2)
    ]
    await store.deposit([item(dev, 9), *timed], NOW_MS)
    assert await store.expire_timed(NOW_MS) == 0
    assert await store.expire_timed(NOW_MS + 1_000) == 1
    left = [e.msg_id for e in await store.fetch(dev, 0, 10)]
    assert left == [item(dev, 9).msg_id, timed[1].msg_id]
    assert await store.expire_timed(NOW_MS + 10_000) == 1
    assert [e.msg_id for e in await store.fetch(dev, 0, 10)] == [item(dev, 9).msg_id]
    assert await store.mailbox_size(dev) == 1
    # A retry of an expired envelope is still a duplicate, not a new copy.
    assert (await store.deposit([timed[0]], NOW_MS + 20_000)).duplicates == 1


async def test_seq_never_reused(make_store: StoreFactory) -> None:
    store = await make_store()
    dev = os.urandom(16)
    await store.deposit([item(dev, i) for i in range(3)], NOW_MS)
    await store.ack(dev, 3, NOW_MS)
    assert await store.last_seq(dev) == 3
    await store.close()
    store = await make_store()
    result = await store.deposit([item(dev, 10)], NOW_MS)
    assert result.news == {dev: 4}
    assert [e.seq for e in await store.fetch(dev, 0, 10)] == [4]


async def test_quota_is_all_or_nothing(make_store: StoreFactory) -> None:
    store = await make_store(max_mailbox_entries=3)
    full, other = os.urandom(16), os.urandom(16)
    await store.deposit([item(full, i) for i in range(3)], NOW_MS)
    with pytest.raises(ProtocolError) as info:
        await store.deposit([item(other, 100), item(full, 100)], NOW_MS)
    assert info.value.code is ErrorCode.QUOTA
    assert await store.mailbox_size(other) == 0
    # A pure retry of what is stored is still fine on a full mailbox.
    assert (await store.deposit([item(full, 0)], NOW_MS)).duplicates == 1
    await store.ack(full, 1, NOW_MS)
    assert (await store.deposit([item(other, 100), item(full, 100)], NOW_MS)).stored == 2
    # The refused attempt left no msg_id behind.
    assert await store.mailbox_size(full) == 3


async def test_a_refused_deposit_in_a_busy_batch_undoes_only_itself(
    make_store: StoreFactory,
) -> None:
    """Concurrent deposits share a transaction (SQLite: one batch); one refused after
    writing part of itself must leave nothing, and the others must all stay."""
    store = await make_store(max_mailbox_entries=2)
    full, others = os.urandom(16), [os.urandom(16) for _ in range(6)]
    await store.deposit([item(full, 0), item(full, 1)], NOW_MS)
    commits = store.commits if isinstance(store, SqliteStore) else 0
    calls = [store.deposit([item(d, 10)], NOW_MS) for d in others[:3]]
    # Writes to others[3] first, then finds ``full`` full.
    calls.append(store.deposit([item(others[3], 10), item(full, 10)], NOW_MS))
    calls += [store.deposit([item(d, 10)], NOW_MS) for d in others[4:]]
    results = await asyncio.gather(*calls, return_exceptions=True)
    refused = results.pop(3)
    assert isinstance(refused, ProtocolError) and refused.code is ErrorCode.QUOTA
    assert [getattr(r, "stored", r) for r in results] == [1] * 5
    if isinstance(store, SqliteStore):
        assert store.commits == commits + 1  # all in one transaction
    assert await store.mailbox_size(others[3]) == 0 and await store.fetch(others[3], 0, 9) == []
    for d in others[:3] + others[4:]:
        assert [e.seq for e in await store.fetch(d, 0, 9)] == [1]
    # Nothing of the refused deposit is remembered: with room made, it stores in full.
    await store.ack(full, 2, NOW_MS)
    assert (await store.deposit([item(others[3], 10), item(full, 10)], NOW_MS)).stored == 2


async def test_claim_is_atomic_then_fallback(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate()
    await register(store, user)
    dev = user.devices[0]
    keys = [dev.signed_key(f"k{i}") for i in range(150)]
    await store.add_one_time_keys(dev.device_id, keys[:100], None)
    counts = await store.add_one_time_keys(
        dev.device_id, keys[100:], dev.signed_key("fb", fallback=True)
    )
    assert (counts.one_time_keys, counts.has_fallback_key) == (150, True)
    claimed = await asyncio.gather(*(store.claim_key(dev.device_id) for _ in range(200)))
    one_time = [k for k in claimed if k is not None and not k.fallback]
    fallback = [k for k in claimed if k is not None and k.fallback]
    assert sorted(k.key_id for k in one_time) == sorted(k.key_id for k in keys)
    assert len(fallback) == 50 and {k.key_id for k in fallback} == {"fb"}
    assert (await store.key_counts(dev.device_id)).one_time_keys == 0


async def test_a_fallback_only_claim_leaves_the_one_time_keys(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate()
    await register(store, user)
    dev = user.devices[0]
    assert await store.claim_key(dev.device_id, one_time=False) is None
    await store.add_one_time_keys(
        dev.device_id, [dev.signed_key("a0")], dev.signed_key("fb", fallback=True)
    )
    key = await store.claim_key(dev.device_id, one_time=False)
    assert key is not None and (key.key_id, key.fallback) == ("fb", True)
    assert (await store.key_counts(dev.device_id)).one_time_keys == 1


async def test_claim_without_keys(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate()
    await register(store, user)
    assert await store.claim_key(user.devices[0].device_id) is None
    assert await store.claim_key(os.urandom(16)) is None


async def test_too_many_stored_keys(make_store: StoreFactory) -> None:
    store = await make_store(max_stored_one_time_keys=5)
    user = User.generate()
    await register(store, user)
    dev = user.devices[0]
    await store.add_one_time_keys(dev.device_id, [dev.signed_key(f"a{i}") for i in range(5)], None)
    # Known key ids are ignored, so a retry does not count twice.
    await store.add_one_time_keys(dev.device_id, [dev.signed_key("a0")], None)
    with pytest.raises(ProtocolError) as info:
        await store.add_one_time_keys(dev.device_id, [dev.signed_key("b")], None)
    assert info.value.code is ErrorCode.TOO_MANY_KEYS
    assert (await store.key_counts(dev.device_id)).one_time_keys == 5


async def test_tokens(make_store: StoreFactory) -> None:
    store = await make_store(max_tokens_per_user=2)
    alice, bob = User.generate(), User.generate()
    t1, t2, t3 = (token_hash(os.urandom(32)) for _ in range(3))
    await store.add_token(alice.user_key, t1)
    await store.add_token(alice.user_key, t1)  # idempotent
    assert await store.user_for_token(t1) == alice.user_key
    with pytest.raises(ProtocolError) as info:
        await store.add_token(bob.user_key, t1)
    assert info.value.code is ErrorCode.CONFLICT
    await store.add_token(alice.user_key, t2)
    with pytest.raises(ProtocolError) as info:
        await store.add_token(alice.user_key, t3)
    assert info.value.code is ErrorCode.QUOTA
    assert not await store.revoke_token(bob.user_key, t1)
    assert await store.revoke_token(alice.user_key, t1)
    assert await store.user_for_token(t1) is None


async def stored_bodies(store: Store) -> tuple[int, int]:
    """(rows in ``bodies``, bytes of body held inline in mailbox entries), read directly."""
    query = (
        "SELECT (SELECT count(*) FROM bodies),"
        " (SELECT coalesce(sum(length(body)), 0) FROM mailbox_entries)"
    )
    if isinstance(store, SqliteStore):
        conn = sqlite3.connect(store._path)
        try:
            count, inline = conn.execute(query).fetchone()
        finally:
            conn.close()
        return int(count), int(inline)
    assert isinstance(store, PostgresStore)
    pg = await asyncpg.connect(PG_DSN, server_settings={"search_path": store._schema})
    try:
        row = await pg.fetchrow(query)
    finally:
        await pg.close()
    return int(row[0]), int(row[1])


async def test_a_fanned_out_body_is_stored_once(make_store: StoreFactory) -> None:
    store = await make_store()
    d0, d1, d2, other = (os.urandom(16) for _ in range(4))
    body = os.urandom(1000)
    fan = [DepositItem(d, b"m" * 16, body) for d in (d0, d1, d2)]
    result = await store.deposit([*fan, item(other, 1, b"own")], NOW_MS)
    assert (result.stored, result.duplicates) == (4, 0)
    assert await stored_bodies(store) == (1, 3)  # the shared body once; b"own" inline
    for d in (d0, d1, d2):
        assert [(e.seq, e.msg_id, e.body) for e in await store.fetch(d, 0, 10)] == [
            (1, b"m" * 16, body)
        ]
        assert await store.mailbox_size(d) == 1  # each entry counts in its own mailbox
    # A retry stores nothing, not even an unreferenced body.
    again = await store.deposit(fan, NOW_MS)
    assert (again.stored, again.duplicates) == (0, 3)
    assert await stored_bodies(store) == (1, 3)

    # The body stays while any entry points at it, whichever way entries go.
    assert await store.ack(d0, 1, NOW_MS) == 1
    timed = os.urandom(500)
    await store.deposit(
        [DepositItem(d, b"t" * 16, timed, expires_at=NOW_MS + 10) for d in (d0, d1)], NOW_MS
    )
    assert (await stored_bodies(store))[0] == 2
    await store.close()
    store = await make_store()  # read back from the database, not from memory
    assert [e.body for e in await store.fetch(d1, 0, 10)] == [body, timed]
    assert [e.body for e in await store.fetch(d0, 0, 10)] == [timed]
    assert await store.expire_timed(NOW_MS + 10) == 2
    assert await stored_bodies(store) == (1, 3)
    assert [e.body for e in await store.fetch(d2, 0, 10)] == [body]
    assert await store.expire(NOW_MS + 1) == 3
    assert await stored_bodies(store) == (0, 0)
    assert await store.fetch(d1, 0, 10) == []


async def test_a_removed_device_releases_its_share_of_a_body(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate(2)
    await register(store, user)
    first, second = user.devices
    body = os.urandom(300)
    await store.deposit(
        [DepositItem(d.device_id, b"g" * 16, body) for d in (first, second)], NOW_MS
    )
    user.devices, user.version = [first], 2
    await register(store, user)  # drops the second device and its entries
    assert await stored_bodies(store) == (1, 0)
    assert await store.ack(first.device_id, 1, NOW_MS) == 1
    assert await stored_bodies(store) == (0, 0)


async def test_a_full_mailbox_refuses_a_fan_out_without_a_stray_body(
    make_store: StoreFactory,
) -> None:
    store = await make_store(max_mailbox_entries=1)
    full, free = os.urandom(16), os.urandom(16)
    await store.deposit([item(full, 1)], NOW_MS)
    body = os.urandom(200)
    with pytest.raises(ProtocolError) as info:
        await store.deposit([DepositItem(d, b"f" * 16, body) for d in (free, full)], NOW_MS)
    assert info.value.code is ErrorCode.QUOTA
    assert (await stored_bodies(store))[0] == 0
    assert await store.fetch(free, 0, 10) == []


async def test_fanout_targets_answer_many_tokens_at_once(make_store: StoreFactory) -> None:
    store = await make_store(max_tokens_per_user=1000)
    alice, bob = User.generate(2), User.generate(1)
    await register(store, alice)
    await register(store, bob)
    # More tokens than one SQL parameter list holds (SQLite reads them in chunks).
    many = [token_hash(os.urandom(32)) for _ in range(600)]
    for t in many:
        await store.add_token(alice.user_key, t)
    tb, unknown = token_hash(os.urandom(32)), token_hash(os.urandom(32))
    await store.add_token(bob.user_key, tb)
    alice_devices = frozenset(d.device_id for d in alice.devices)
    bob_devices = frozenset(d.device_id for d in bob.devices)
    for _ in range(2):  # the second time from the memo, where a store keeps one
        got = await store.fanout_targets([*many, tb, unknown, tb])
        assert set(got) == {*many, tb}
        assert all(got[t] == (alice.user_key, alice_devices) for t in many)
        assert got[tb] == (bob.user_key, bob_devices)
        assert got[tb] == (await store.user_for_token(tb), await store.user_devices(bob.user_key))
    # Writes are seen: a dropped device, a revoked token.
    alice.devices, alice.version = alice.devices[:1], 2
    await register(store, alice)
    assert await store.revoke_token(bob.user_key, tb)
    got = await store.fanout_targets([many[0], tb])
    assert got == {many[0]: (alice.user_key, frozenset({alice.devices[0].device_id}))}
    assert await store.fanout_targets([]) == {}


async def test_register_versions(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate(2)
    await register(store, user)
    first, second = user.devices
    got = await store.get_device(first.device_id)
    assert got is not None
    assert got.user_key == user.user_key and got.keys == first.keys
    assert got.device_list == user.signed_list() and got.device_list_version == 1
    assert await store.user_devices(user.user_key) == {first.device_id, second.device_id}
    await store.deposit([item(second.device_id, 1)], NOW_MS)

    # Version 2 drops the second device: its keys and entries go, its seq stays.
    user.devices = [first]
    user.version = 2
    await register(store, user)
    assert await store.user_devices(user.user_key) == {first.device_id}
    assert await store.get_device(second.device_id) is None
    assert await store.mailbox_size(second.device_id) == 0
    assert await store.last_seq(second.device_id) == 1

    # An older list, or another list under the same version, is a conflict.
    for version, devices in ((1, [first]), (2, [first, Device.generate()])):
        user.version, user.devices = version, devices
        with pytest.raises(ProtocolError) as info:
            await register(store, user)
        assert info.value.code is ErrorCode.CONFLICT

    # A device cannot move to another user.
    thief = User.generate()
    thief.devices = [first]
    with pytest.raises(ProtocolError) as info:
        await register(store, thief)
    assert info.value.code is ErrorCode.CONFLICT


async def test_sqlite_group_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "g.db")
    await store.open()
    try:
        devs = [os.urandom(16) for _ in range(10)]
        results = await asyncio.gather(
            *(store.deposit([item(devs[i % 10], i)], NOW_MS) for i in range(300))
        )
        assert sum(r.stored for r in results) == 300
        # Many deposits share one transaction (one fsync): far fewer commits than deposits.
        assert store.commits < 100
        for dev in devs:
            seqs = [e.seq for e in await store.fetch(dev, 0, 100)]
            assert seqs == list(range(1, 31))
    finally:
        await store.close()


def _synchronous(conn: sqlite3.Connection) -> int:
    """The level the batch running this job commits with (1 NORMAL, 2 FULL)."""
    return int(conn.execute("PRAGMA synchronous").fetchone()[0])


async def test_sqlite_an_ack_alone_waits_for_the_next_fsync(tmp_path: Path) -> None:
    """A batch of only acknowledgements commits without its own fsync (synchronous=NORMAL);
    any batch holding a deposit commits with FULL, its acks included."""
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        dev = os.urandom(16)
        await store.deposit([item(dev, 1)], NOW_MS)
        # The store's own write path, with a probe job beside an ack and then a deposit.
        assert await store._call(_synchronous, durable=False) == 1
        level, acked = await asyncio.gather(
            store._call(_synchronous, durable=False), store.ack(dev, 1, NOW_MS)
        )
        assert (level, acked) == (1, 1)
        level, result = await asyncio.gather(
            store._call(_synchronous, durable=False), store.deposit([item(dev, 2)], NOW_MS)
        )
        assert (level, result.stored) == (2, 1)
        assert await store._call(_synchronous) == 2
    finally:
        await store.close()
    # The acknowledged entry stayed gone across a reopen; the later one is there.
    store = SqliteStore(tmp_path / "s.db")
    await store.open()
    try:
        assert [e.seq for e in await store.fetch(dev, 0, 9)] == [2]
    finally:
        await store.close()


async def test_sqlite_a_failed_commit_fails_its_batch_only(tmp_path: Path) -> None:
    """A COMMIT that fails (here a deferred constraint) rolls the whole batch back, every
    job in it gets an error, and the next batch commits as usual."""
    store = SqliteStore(tmp_path / "c.db")
    await store.open()
    try:
        dev = os.urandom(16)

        def dangling_reference(conn: sqlite3.Connection) -> None:
            conn.execute("CREATE TABLE IF NOT EXISTS parent (id INTEGER PRIMARY KEY)")
            conn.execute(
                "CREATE TABLE IF NOT EXISTS child (id INTEGER REFERENCES parent (id)"
                " DEFERRABLE INITIALLY DEFERRED)"
            )
            conn.execute("INSERT INTO child VALUES (42)")  # checked only at COMMIT

        results = await asyncio.gather(
            store._call(dangling_reference),
            store.deposit([item(dev, 1)], NOW_MS),
            return_exceptions=True,
        )
        assert all(isinstance(r, LocalError) for r in results), results
        assert await store.fetch(dev, 0, 9) == []
        assert (await store.deposit([item(dev, 1)], NOW_MS)).stored == 1
        assert [e.seq for e in await store.fetch(dev, 0, 9)] == [1]
    finally:
        await store.close()


async def test_sqlite_close_commits_what_is_queued(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    dev = os.urandom(16)
    calls = [asyncio.ensure_future(store.deposit([item(dev, i)], NOW_MS)) for i in range(50)]
    await asyncio.sleep(0)  # the deposits are queued, not yet committed
    await store.close()
    assert all(c.done() and c.result().stored == 1 for c in calls)
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    try:
        assert len(await store.fetch(dev, 0, 100)) == 50
    finally:
        await store.close()


async def test_store_repr_has_no_secrets(make_store: StoreFactory) -> None:
    store = await make_store()
    user = User.generate()
    await register(store, user)
    dev = user.devices[0]
    got = await store.get_device(dev.device_id)
    await store.deposit([item(dev.device_id, 1, b"secret-body")], NOW_MS)
    (entry,) = await store.fetch(dev.device_id, 0, 1)
    for obj in (store, got, entry, item(dev.device_id, 1, b"secret-body")):
        text = repr(obj)
        assert dev.device_id.hex() not in text and str(dev.device_id) not in text
        assert "secret-body" not in text and str(user.user_key) not in text
