"""Run every atheris harness for a given time; report inputs tried and crashes per target.

    .venv/bin/python fuzz/run.py SECONDS [TARGET ...]

Each target runs in its own process (libFuzzer via atheris), seeded with valid encodings
(fuzz/targets.py). A crash is any exception other than the parser's documented errors;
libFuzzer saves the input under fuzz/crashes/ and the run exits 1. See docs/reliability.md.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
from fuzz.targets import TARGETS, seeds  # noqa: E402


def run(name: str, seconds: int, crashes: Path) -> tuple[int, bool, str]:
    """(inputs tried, crashed, tail of the output) for one target."""
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as corpus:
        for i, seed in enumerate(seeds(name)):
            (Path(corpus) / f"seed{i}").write_bytes(seed)
        proc = subprocess.run(
            [
                sys.executable,
                str(ROOT / "harness.py"),
                name,
                f"-max_total_time={seconds}",
                "-print_final_stats=1",
                f"-artifact_prefix={crashes}/{name}-",
                corpus,
            ],
            capture_output=True,
            text=True,
        )
    out = proc.stdout + proc.stderr
    found = re.search(r"stat::number_of_executed_units: (\d+)", out)
    return (int(found.group(1)) if found else 0), proc.returncode != 0, out[-3000:]


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    names = sys.argv[2:] or list(TARGETS)
    crashes = ROOT / "crashes"
    crashes.mkdir(exist_ok=True)
    total = 0
    failed = []
    for name in names:
        tried, crashed, tail = run(name, seconds, crashes)
        total += tried
        print(f"{name:14} inputs={tried:>10} crashes={1 if crashed else 0}", flush=True)
        if crashed:
            failed.append(name)
            print(tail, file=sys.stderr)
    print(f"{'total':14} inputs={total:>10} crashes={len(failed)}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
