"""What every bench that writes docs/performance.md shares: the machine line and the
replacement of its own section (other sections belong to other benches)."""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

__all__ = ["DOCS", "Steal", "load", "loop_speed", "machine", "write_section"]

DOCS = Path(__file__).resolve().parents[1] / "docs" / "performance.md"


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return (
        f"{os.cpu_count()} cores ({model}), {int(mem) // 1024 // 1024} GiB, "
        f"Linux {platform.release()}, Python {platform.python_version()}"
    )


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def loop_speed(seconds: float = 2.0) -> float:
    """Millions of iterations per second of a bare Python loop on core 0 (the server's).

    This VM's speed drifts by tens of per cent within minutes with almost no steal (a busy
    host's caches and memory, which the guest cannot see), so the reports say how fast the
    core was before and after.
    """
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        count, end = 0, time.perf_counter() + seconds
        while time.perf_counter() < end:
            count += 1
        return count / seconds / 1e6
    finally:
        os.sched_setaffinity(0, cores)


class Steal:
    """The share of this VM's CPU time the hypervisor gave to others since it was made.

    A busy host slows every figure a bench prints; steal is the part of that the guest can
    see (``loop_speed`` shows the rest), so the reports say how much was taken while they ran.
    """

    def __init__(self) -> None:
        self._start = _steal_and_total()

    def percent(self) -> float:
        steal, total = _steal_and_total()
        return 100 * (steal - self._start[0]) / max(1, total - self._start[1])


def _steal_and_total() -> tuple[int, int]:
    # /proc/stat's first line: user nice system idle iowait irq softirq steal (jiffies).
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return fields[7], sum(fields)


def write_section(heading: str, section: str, docs: Path = DOCS) -> None:
    """Replace the ``## heading`` section of ``docs`` with ``section`` (or append it)."""
    text = docs.read_text()
    start = text.find(heading)
    if start < 0:
        docs.write_text(text.rstrip("\n") + "\n\n" + section)
        return
    end = text.find("\n## ", start + len(heading))
    rest = text[end + 1 :] if end >= 0 else ""
    docs.write_text(text[:start] + section + ("\n" + rest if rest else ""))
