"""The rate ladder every server in the side-by-side runs on (samizdat, Synapse, ejabberd).

One *step* is one offered rate: a receiver process subscribes first, then sender processes
drive `openloop.open_loop` (fixed schedule, latency from the scheduled send time), and the
server's CPU time is read from /proc before and after. The ladder steps the rate up until p99
exceeds the limit or a message is lost; the best step is the highest one that passed.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from openloop import cpu_seconds, percentile  # noqa: E402

P99_LIMIT_MS = 50.0  # the bar of the side-by-side (issue 7)
COLLAPSE_MS = 1000.0  # looser bar: "before its latency collapses"


@dataclass(frozen=True)
class Step:
    offered: float  # messages/s asked of the senders
    sent: int  # messages the senders got out (acknowledged where the protocol acks)
    elapsed: float  # seconds the senders ran
    latencies: list[int]  # ns from scheduled send to arrival, sorted, one per delivery
    cpu: float  # server CPU seconds during the step

    @property
    def delivered(self) -> int:
        return len(self.latencies)

    @property
    def lost(self) -> int:
        return max(0, self.sent - self.delivered)

    @property
    def delivered_per_s(self) -> float:
        return self.delivered / self.elapsed if self.elapsed else 0.0

    @property
    def cpu_per_msg_us(self) -> float:
        return self.cpu / max(self.delivered, 1) * 1e6

    def p(self, q: float) -> float:
        return percentile(self.latencies, q)

    def passed(self, limit_ms: float = P99_LIMIT_MS) -> bool:
        return self.delivered > 0 and self.lost == 0 and self.p(0.99) <= limit_ms


HEADER = (
    f"{'offered/s':>10} {'sent/s':>8} {'deliv/s':>8} {'lost':>6} {'p50 ms':>8} "
    f"{'p99 ms':>8} {'p99.9 ms':>9} {'CPU us/msg':>10}"
)


def row(step: Step) -> str:
    verdict = "ok" if step.passed() else "ok<1s" if step.passed(COLLAPSE_MS) else "FAIL"
    return (
        f"{step.offered:>10,.0f} {step.sent / step.elapsed:>8,.0f} "
        f"{step.delivered_per_s:>8,.0f} {step.lost:>6} {step.p(0.50):>8.1f} "
        f"{step.p(0.99):>8.1f} {step.p(0.999):>9.1f} {step.cpu_per_msg_us:>10,.0f}  {verdict}"
    )


def run_step(
    offered: float,
    pids: Sequence[int],
    receiver: Callable[..., None],
    receiver_args: tuple[Any, ...],
    sender: Callable[..., None],
    sender_args: Sequence[tuple[Any, ...]],
) -> Step:
    """One offered rate: ``receiver(*receiver_args, ready, out)`` puts its latencies on ``out``
    after setting ``ready``; each ``sender(*args, out)`` (one process per tuple) puts
    (sent, elapsed). ``pids``: the server processes whose CPU time is charged."""
    ctx = mp.get_context("spawn")
    ready, out = ctx.Event(), ctx.Queue()
    rproc = ctx.Process(target=receiver, args=(*receiver_args, ready, out))
    rproc.start()
    if not ready.wait(120):
        rproc.kill()
        raise SystemExit("receiver did not get ready")
    sent_out = ctx.Queue()
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    procs = [ctx.Process(target=sender, args=(*args, sent_out)) for args in sender_args]
    for p in procs:
        p.start()
    results = [sent_out.get() for _ in procs]
    for p in procs:
        p.join()
    latencies: list[int] = out.get()
    rproc.join()
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    return Step(
        offered=offered,
        sent=sum(r[0] for r in results),
        elapsed=max(r[1] for r in results),
        latencies=sorted(latencies),
        cpu=cpu,
    )


class Deadline:
    """When a receiver stops: ``expect`` s after the step starts, but not while messages still
    arrive (a stalled server's late deliveries count as latency, not as losses), and never
    more than ``cap`` s past ``expect``."""

    def __init__(self, expect: float, quiet: float = 2.0, cap: float = 30.0) -> None:
        now = time.monotonic()
        self.end, self.quiet, self.last_call = now + expect, quiet, now + expect + cap
        self.last_arrival = 0.0

    def arrived(self) -> None:
        self.last_arrival = time.monotonic()

    def remaining(self) -> float:
        """Seconds to keep waiting (<= 0: stop)."""
        until = min(max(self.end, self.last_arrival + self.quiet), self.last_call)
        return until - time.monotonic()


def climb(
    name: str,
    rates: Sequence[float],
    duration: float,
    measure: Callable[[float, float], Step],
    warmup: float = 3.0,
    descend: int = 3,
) -> list[Step]:
    """Measure at each rate in turn, printing a row each, until a step loses a message or
    its p99 passes COLLAPSE_MS (so both bars, 50 ms and collapse, get a best step).

    A short unrecorded warm-up step at the lowest rate goes first: a freshly started server
    is still creating tables, filling caches and finishing start-up jobs.
    """
    print(f"{name}:")
    if warmup:
        step = measure(rates[0], warmup)
        print(f"warm-up ({warmup:.0f} s, not counted): {row(step)}", flush=True)
    print(HEADER, flush=True)
    steps: list[Step] = []
    for rate in rates:
        step = measure(rate, duration)
        steps.append(step)
        print(row(step), flush=True)
        if not step.passed(COLLAPSE_MS):
            break
    # A loaded machine can fail the lowest rung: go down (halving) until a step passes.
    rate = rates[0]
    for _ in range(descend):
        if best(steps) is not None:
            break
        rate /= 2
        step = measure(rate, duration)
        steps.insert(0, step)
        print(row(step), flush=True)
    return steps


def best(steps: Sequence[Step], limit_ms: float = P99_LIMIT_MS) -> Step | None:
    """The highest rate passing ``limit_ms`` below the first rate that fails it (a later
    step passing again by luck does not count)."""
    found = None
    for step in sorted(steps, key=lambda s: s.offered):
        if step.passed(limit_ms):
            found = step
        elif found is not None:
            break
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server's config file)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def parse_rates(text: str) -> list[float]:
    return [float(r) for r in text.split(",") if r]


def descendant_pids(pid: int) -> list[int]:
    """``pid`` and every process below it (to find a server behind a launcher script)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def process_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
