"""The open-loop load method shared by every bench that compares latency at an offered rate.

`peers/` (Synapse, ejabberd) drive their servers with this schedule; `deposit_delivery.py`
(samizdat, through `rawclient.py`) keeps the same schedule (deposit k at start + k/rate, stamped
with that time, at most as many outstanding as lanes) driven by a timer callback instead of a
task per lane; all summarise with the same percentile code, so their figures compare.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

# send(lane, n, scheduled_ns): the lane's n-th message, stamped with its *scheduled* wall time.
Send = Callable[[int, int, int], Awaitable[None]]


async def open_loop(
    lanes: int, rate: float | None, duration: float, send: Send
) -> tuple[int, float]:
    """Send for ``duration`` s on ``lanes`` lanes; ``rate`` None means as fast as replies allow.

    With a rate, every lane sends on a fixed schedule (lanes staggered evenly) and stamps each
    message with its *scheduled* time, so a server that stalls is charged for the delay it
    caused (coordinated omission corrected). Returns (messages sent and acknowledged, seconds).
    """
    acked = 0
    start = time.perf_counter()
    stop = start + duration

    async def lane(slot: int) -> None:
        nonlocal acked
        interval = lanes / rate if rate else 0.0
        next_at = start + interval * slot / lanes
        n = 0
        while True:
            now = time.perf_counter()
            if now >= stop:
                return
            if rate:
                if next_at > now:
                    await asyncio.sleep(next_at - now)
                scheduled = time.time_ns() - int((time.perf_counter() - next_at) * 1e9)
                next_at += interval
            else:
                scheduled = time.time_ns()
            await send(slot, n, scheduled)
            n += 1
            acked += 1

    await asyncio.gather(*(lane(slot) for slot in range(lanes)))
    return acked, time.perf_counter() - start


def percentile(sorted_values: list[int], q: float) -> float:
    """The ``q`` quantile of nanosecond latencies, in milliseconds (nan when empty)."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index] / 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    """Resident memory of a process (Linux /proc), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")
