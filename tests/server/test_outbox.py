"""The connection outbox (server/outbox.py) behaves as the bounded asyncio.Queue it replaces."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from samizdat.server.outbox import Outbox


async def test_put_waits_while_full_and_get_while_empty() -> None:
    box: Outbox[int] = Outbox(2)
    box.put_nowait(1)
    box.put_nowait(2)
    assert box.full()
    with pytest.raises(asyncio.QueueFull):
        box.put_nowait(3)
    blocked = asyncio.ensure_future(box.put(3))
    await asyncio.sleep(0)
    assert not blocked.done()  # backpressure
    assert await box.get() == 1
    await blocked
    assert [box.get_nowait(), box.get_nowait()] == [2, 3]
    with pytest.raises(asyncio.QueueEmpty):
        box.get_nowait()
    getter = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    assert not getter.done()
    box.put_nowait(4)
    assert await getter == 4


async def test_a_cancelled_getter_strands_nothing() -> None:
    # long-polling cancels its getter on a timeout (poll.py)
    box: Outbox[str] = Outbox(4)
    first = asyncio.ensure_future(box.get())
    second = asyncio.ensure_future(box.get())
    await asyncio.sleep(0)
    box.put_nowait("x")  # wakes the first getter...
    first.cancel()  # ...which is cancelled before it runs: the second gets the item
    assert await asyncio.wait_for(second, 1) == "x"
    assert box.empty()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=40), st.integers(1, 4))
def test_same_order_as_asyncio_queue(ops: list[int], maxsize: int) -> None:
    async def run() -> None:
        box: Outbox[int] = Outbox(maxsize)
        queue: asyncio.Queue[int] = asyncio.Queue(maxsize)
        for n, op in enumerate(ops):
            if op < 2:  # put, where it fits
                if not queue.full():
                    queue.put_nowait(n)
                    box.put_nowait(n)
            elif not queue.empty():
                assert box.get_nowait() == queue.get_nowait()
            assert (box.qsize(), box.full(), box.empty()) == (
                queue.qsize(),
                queue.full(),
                queue.empty(),
            )

    asyncio.run(run())


async def test_a_sink_gets_items_at_once_and_pausing_queues_them_in_order() -> None:
    # The WebSocket front's way (server/front.py): no task between the session and the
    # transport; while the transport's buffer is full, frames queue, then put waits.
    sent: list[int] = []
    box: Outbox[int] = Outbox(2)
    box.put_nowait(1)  # queued before the sink came
    box.attach(sent.append)
    assert sent == [1] and box.empty()
    box.put_nowait(2)
    assert sent == [1, 2] and box.empty() and not box.full()
    box.pause()
    box.put_nowait(3)
    await box.put(4)
    assert sent == [1, 2] and box.full()
    blocked = asyncio.ensure_future(box.put(5))
    await asyncio.sleep(0)
    assert not blocked.done()  # backpressure
    box.resume()
    assert sent == [1, 2, 3, 4]
    await asyncio.wait_for(blocked, 1)
    assert sent == [1, 2, 3, 4, 5] and box.empty()


async def test_a_sink_that_pauses_while_flushing_keeps_the_rest_queued() -> None:
    sent: list[int] = []
    box: Outbox[int] = Outbox(4)

    def sink(item: int) -> None:
        sent.append(item)
        if item == 2:
            box.pause()  # the transport's buffer filled while sending 2

    box.attach(sink)
    box.pause()
    for n in (1, 2, 3):
        box.put_nowait(n)
    box.resume()
    assert sent == [1, 2] and box.qsize() == 1
    box.resume()
    assert sent == [1, 2, 3] and box.empty()
