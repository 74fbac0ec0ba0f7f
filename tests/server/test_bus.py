from __future__ import annotations

import asyncio

from samizdat.server.bus.local import LocalBus


async def test_publish_wakes_subscribers_of_that_device_only() -> None:
    bus = LocalBus()
    a, b = bus.subscribe(b"a" * 16), bus.subscribe(b"b" * 16)
    await bus.publish(b"a" * 16, 3)
    assert await asyncio.wait_for(a.wait(), 1) == 3
    waiter = asyncio.create_task(b.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    waiter.cancel()
    a.close()
    b.close()
    a.close()
    assert bus.subscriber_count() == 0
    await bus.close()


async def test_news_coalesce_into_one_wake_up() -> None:
    bus = LocalBus()
    sub = bus.subscribe(b"d" * 16)
    for seq in (1, 2, 5, 3, 4):
        await bus.publish(b"d" * 16, seq)
    # One wake-up is enough: the consumer fetches everything after its cursor.
    assert await sub.wait() == 5
    assert "pending=0" in repr(sub)
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # nothing new since
    await bus.publish(b"d" * 16, 6)
    assert await asyncio.wait_for(waiter, 1) == 6
