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


async def test_full_queue_drops_but_still_wakes() -> None:
    bus = LocalBus(queue_size=2)
    sub = bus.subscribe(b"d" * 16)
    for seq in range(1, 6):
        await bus.publish(b"d" * 16, seq)
    # One wake-up is enough: the consumer fetches everything after its cursor.
    assert await sub.wait() == 2
    assert "pending=0" in repr(sub)
