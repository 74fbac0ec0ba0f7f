"""Issue 7's targets, each measured by its own bench in turn, as one table.

    .venv/bin/python bench/targets.py [--write-docs] [--duration 8] [--store postgresql://…]

Runs the benches one after the other (never two at once; each pins the server to core 0
and its load generators to core 1), reads the figures they print, and prints a table of
target, measured value and whether it is met, with the machine, the load average, the steal
and a loop-speed probe (this VM's speed drifts), and the exact commands. ``--write-docs``
replaces the section "Issue 7 targets, one run" of docs/performance.md. Nothing here
measures the server itself: the benches' own output (bench/README.md) is the record, and
this file only reads the lines it quotes.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from report import DOCS, Steal, load, loop_speed, machine, write_section  # noqa: E402

__all__ = ["Row", "main"]

SECTION = "## Issue 7 targets, one run of bench/targets.py"
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
_NUMBER = r"([\d,]+(?:\.\d+)?)"
#: bench/deposit_delivery.py's saturation line: deposits/s, server µs per deposit.
_SATURATION = rf"saturation: {_NUMBER} envelopes/s durable .*?, {_NUMBER} us per deposit"


def _num(text: str) -> float:
    return float(text.replace(",", ""))


@dataclass
class Row:
    target: str
    measured: str
    met: bool | None  # None: a figure the issue asks for without a bar

    @property
    def verdict(self) -> str:
        return {True: "yes", False: "**no**", None: "—"}[self.met]


@dataclass
class Rate:
    offered: float
    achieved: float
    p50: float
    p99: float
    n: int


def _rates(out: str) -> list[Rate]:
    """The per-rate rows of bench/deposit_delivery.py."""
    rows = []
    pattern = rf"^\s*{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+{_NUMBER}\s+(\d+)\s"
    for m in re.finditer(pattern, out, re.M):
        offered, achieved, p50, p99, _p999, n = m.groups()
        rows.append(Rate(_num(offered), _num(achieved), _num(p50), _num(p99), int(n)))
    return rows


def _search(pattern: str, out: str) -> re.Match[str]:
    found = re.search(pattern, out)
    if found is None:
        raise SystemExit(f"bench output changed; no line matches {pattern!r}:\n{out}")
    return found


def _one_to_one(out: str, duration: float) -> list[Row]:
    sat = _search(_SATURATION, out)
    at = {r.offered: r for r in _rates(out)}
    rows = [
        Row(
            "(a) durable 1:1 deposits/s at saturation, one process, SQLite",
            f"{sat[1]}/s ({sat[2]} µs server CPU each)",
            None,
        )
    ]
    r = at.get(2000.0)
    if r is not None:
        whole = r.n >= int(duration * r.offered)
        rows.append(
            Row(
                "(b) at 2,000/s (10 % of 20,000): p50 ≤ 2 ms, p99 ≤ 10 ms, nothing lost",
                f"{r.achieved:,.0f}/s delivered, p50 {r.p50} ms, p99 {r.p99} ms"
                + ("" if whole else f", {r.n:,} of {int(duration * r.offered):,}"),
                r.p50 <= 2 and r.p99 <= 10 and whole,
            )
        )
    return rows


def _ladder(out: str, duration: float) -> list[Row]:
    passed = [r for r in _rates(out) if r.p99 <= 50 and r.n >= int(duration * r.offered)]
    best = max(passed, key=lambda r: r.achieved, default=None)
    steps = ", ".join(f"{r.offered:,.0f}→p99 {r.p99} ms" for r in _rates(out))
    return [
        Row(
            "≥ 20,000 envelopes/s delivered 1:1 at p99 ≤ 50 ms, nothing lost",
            (f"{best.achieved:,.0f}/s" if best else "no step") + f" (ladder: {steps})",
            best is not None and best.achieved >= 20_000,
        )
    ]


def _idle(out: str, _duration: float) -> list[Row]:
    held = _search(r"connected (\d+) of (\d+)", out)
    kib = _search(rf"{_NUMBER} KiB per idle connection", out)
    per_conn = _num(kib[1])
    return [
        Row(
            "≥ 15,000 idle connections at ≤ 15 KB of server memory each",
            f"{held[1]} of {held[2]} held, {per_conn} KiB each",
            int(held[1]) >= 15_000 and per_conn * 1024 <= 15_000,
        )
    ]


def _tls_floor(out: str, _duration: float) -> list[Row]:
    m = _search(rf"TLS 1.3 +[\d,]+ +{_NUMBER} +{_NUMBER} +{_NUMBER} +{_NUMBER}", out)
    return [
        Row(
            "(a floor under both) OpenSSL alone, per TLS 1.3 connection",
            f"{_num(m[1])} KiB of heap held by the server side; a full handshake "
            f"{_num(m[3]):,.0f} µs of server CPU, {_num(m[4]):,.0f} µs of client CPU",
            None,
        )
    ]


def _storm(out: str, _duration: float) -> list[Row]:
    m = _search(rf"drained: (\d+) of (\d+) \((\d+) failed\) in {_NUMBER} s", out)
    cpu = _search(rf"server CPU {_NUMBER} ms each", out)
    seconds = _num(m[4])
    return [
        Row(
            "10,000 reconnecting clients all back and drained within 10 s",
            f"{m[1]} of {m[2]} in {seconds} s ({cpu[1]} ms server CPU each)",
            m[1] == m[2] and int(m[2]) >= 10_000 and seconds <= 10,
        )
    ]


def _drain(out: str, _duration: float) -> list[Row]:
    m = _search(r"acks: ([\d, ]+) ms \(median (\d+) ms\)", out)
    worst = max(int(x) for x in m[1].split(","))
    return [
        Row(
            "1,000 queued envelopes drained by a returning device within 250 ms",
            f"{m[1]} ms",
            worst <= 250,
        )
    ]


def _p99_by_rate(out: str) -> dict[float, float]:
    pattern = rf"^\s*{_NUMBER}\s+\d+\s+{_NUMBER}\s+{_NUMBER}\s"
    return {_num(m[1]): _num(m[3]) for m in re.finditer(pattern, out, re.M)}


def _redis_hop(via: str, same: str) -> list[Row]:
    hop, local = _p99_by_rate(via), _p99_by_rate(same)
    extra = {rate: hop[rate] - local[rate] for rate in hop if rate in local}
    if not extra:
        raise SystemExit(f"bench output changed: no rates in\n{via}\n{same}")
    shown = ", ".join(f"{d:+.1f} ms at {r:,.0f}/s" for r, d in extra.items())
    return [Row("the extra hop through Redis adds ≤ 2 ms at p99", shown, max(extra.values()) <= 2)]


def _two_nodes(out: str, _duration: float) -> list[Row]:
    sat = _search(_SATURATION, out)
    steps = ", ".join(f"{r.offered:,.0f}/s p50 {r.p50} p99 {r.p99} ms" for r in _rates(out))
    return [
        Row(
            "(e) two nodes, PostgreSQL + Redis (deposits on A, subscribers on B)",
            f"saturation {sat[1]}/s ({sat[2]} µs of node A's CPU each); {steps}",
            None,
        )
    ]


def _group(out: str, _duration: float) -> list[Row]:
    create = _search(r"create \(.*?\): (\d+) ms", out)
    msg = _search(rf"next 10 messages: median {_NUMBER} ms", out)
    return [
        Row(
            "(d) a group of 1,000 member devices",
            f"created in {create[1]} ms; a message fanned out in {msg[1]} ms (median of 10)",
            None,
        )
    ]


def _run(command: list[str], commands: list[str]) -> str:
    """Run one bench; note it in ``commands`` with the steal during it."""
    print(f"$ {shlex.join(command)}", flush=True)
    steal = Steal()
    done = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=1800, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"{command[1]} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
    commands.append(f"{shlex.join(command[2:])}   # steal {steal.percent():.1f} %")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per rate step")
    parser.add_argument(
        "--ladder",
        # Up to the target itself, so that any machine's run shows where it stands.
        default="2000,4000,8000,12000,16000,20000",
        help="rates for p99 ≤ 50 ms",
    )
    parser.add_argument(
        "--store",
        default="postgresql://postgres@127.0.0.1:5432/test",
        help="the PostgreSQL of scenario (e)",
    )
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    py = sys.executable
    d = str(args.duration)
    bench = [py, "-u"]
    runs: list[tuple[list[str], Callable[[str, float], list[Row]]]] = [
        (
            [*bench, "bench/deposit_delivery.py", "--duration", d, "--rates", "1000,2000"],
            _one_to_one,
        ),
        (
            [*bench, "bench/deposit_delivery.py", "--duration", d, "--in-flight", "32"]
            + ["--no-saturation", "--rates", args.ladder],
            _ladder,
        ),
        (
            [*bench, "bench/idle_connections.py", "--connections", "15000", "--processes", "3"],
            _idle,
        ),
        ([*bench, "bench/reconnect_storm.py", "--devices", "10000", "--processes", "4"], _storm),
        ([*bench, "bench/tls_floor.py"], _tls_floor),
        ([*bench, "bench/drain_backlog.py", "--queued", "1000", "--rounds", "5"], _drain),
        (
            [*bench, "bench/deposit_delivery.py", "--duration", d, "--rates", "200,500,1000"]
            + ["--store", args.store],
            _two_nodes,
        ),
        ([*bench, "bench/groups.py", "--sample", "1"], _group),
    ]
    started = datetime.datetime.now(datetime.UTC)
    load_before = load()
    speed_before = loop_speed()
    rows: list[Row] = []
    commands: list[str] = []
    steal = Steal()
    for command, read in runs:
        rows.extend(read(_run(command, commands), args.duration))
    hop = [*bench, "bench/redis_hop.py", "--rates", "200,500,1000", "--duration", "6"]
    via, same = _run(hop, commands), _run([*hop, "--same-node"], commands)
    rows.extend(_redis_hop(via, same))

    table = ["| target | measured | met |", "|---|---|---|"]
    table += [f"| {r.target} | {r.measured} | {r.verdict} |" for r in rows]
    section = "\n".join(
        [
            SECTION,
            "",
            f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}; load average (1/5/15 min) "
            f"before {load_before}, after {load()}; the hypervisor took {steal.percent():.1f} % "
            "of the VM's CPU time during the run (steal, `/proc/stat`; per bench below); a "
            f"bare Python loop on core 0 ran {speed_before:.2f} M iterations/s before and "
            f"{loop_speed():.2f} after (`report.loop_speed`: this VM's speed drifts). "
            "Server on core 0, load generators on "
            "core 1, SQLite `synchronous=FULL` unless said otherwise. Written by "
            f"`.venv/bin/python bench/targets.py {' '.join(sys.argv[1:])}`; the sections "
            "below explain "
            "the figures and what stands between them and the targets.",
            "",
            *table,
            "",
            "Commands, in this order (each prints more than the line quoted above), with the "
            "steal during each:",
            "",
            *(f"    .venv/bin/python {c}" for c in commands),
            "",
        ]
    )
    print()
    print(section)
    if args.write_docs:
        write_section(SECTION, section)
        print(f"wrote {DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
