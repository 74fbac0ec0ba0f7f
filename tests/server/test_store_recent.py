"""The in-memory mailbox tails of the SQLite store (store/recent.py) never disagree with it."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.server.store.base import DepositItem, MailboxEntry
from samizdat.server.store.recent import RecentEntries
from samizdat.server.store.sqlite import SqliteStore

DEVICES = [bytes([i]) * 32 for i in range(3)]

# One step: ("deposit", device), ("ack", device, how many of its entries), ("clear",).
_steps = st.lists(
    st.one_of(
        st.tuples(st.just("deposit"), st.sampled_from(DEVICES)),
        st.tuples(st.just("ack"), st.sampled_from(DEVICES), st.integers(0, 5)),
        st.tuples(st.just("clear")),
    ),
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(
    steps=_steps,
    max_per_device=st.integers(1, 6),
    max_bytes=st.integers(1, 40),
    max_devices=st.integers(1, 3),
)
def test_answers_exactly_or_not_at_all(
    steps: list[tuple[object, ...]], max_per_device: int, max_bytes: int, max_devices: int
) -> None:
    recent = RecentEntries(max_per_device, max_bytes, max_devices)
    # The model: what the database holds per device, and each device's last seq.
    rows: dict[bytes, list[MailboxEntry]] = {d: [] for d in DEVICES}
    last = dict.fromkeys(DEVICES, 0)
    for step in steps:
        if step[0] == "deposit":
            device = step[1]
            assert isinstance(device, bytes)
            last[device] += 1
            entry = MailboxEntry(last[device], os.urandom(4), os.urandom(last[device] % 7), 0)
            rows[device].append(entry)
            recent.added(device, entry)
        elif step[0] == "ack":
            device, count = step[1], step[2]
            assert isinstance(device, bytes) and isinstance(count, int)
            up_to = rows[device][count - 1].seq if 0 < count <= len(rows[device]) else 0
            rows[device] = [e for e in rows[device] if e.seq > up_to]
            recent.acked(device, up_to)
        else:
            recent.clear()
        for device in DEVICES:
            for after in range(last[device] + 1):
                for limit in (1, 3, 100):
                    got = recent.fetch(device, after, limit)
                    if got is not None:
                        assert got == [e for e in rows[device] if e.seq > after][:limit]
    assert len(recent) <= len(DEVICES)


async def test_a_live_consumer_is_served_from_memory(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        device = DEVICES[0]
        await store.deposit([DepositItem(device, b"m1", b"one")], 1000)
        assert store._recent.fetch(device, 0, 10) is not None  # held, so no reader trip
        await store.deposit([DepositItem(device, b"m2", b"two")], 1001)
        fetched = await store.fetch(device, 0, 10)
        assert [e.body for e in fetched] == [b"one", b"two"]
        await store.ack(device, 1, 1002)
        assert [e.body for e in await store.fetch(device, 0, 10)] == [b"two"]
        # Any other write may touch mailboxes (expiry): forget, and read the database.
        assert await store.expire(0) == 0
        assert store._recent.fetch(device, 1, 10) is None
        assert [e.body for e in await store.fetch(device, 1, 10)] == [b"two"]
    finally:
        await store.close()
