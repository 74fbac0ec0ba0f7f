"""Fault injection for 1:1 messaging: SIGKILL the server K times while N messages flow.

    .venv/bin/python bench/faults.py --messages 10000 --kills 50

20 senders and 20 recipients (real ``Client`` objects in this process) use one real
``samizdat server`` process, killed with SIGKILL at random moments and restarted on the
same port and data folder. Prints ``sent= delivered= lost= duplicated= corrupted=`` as
Jepsen's RabbitMQ checker classifies them, then order violations per sender and timings.
Exits 1 if anything was lost, doubled, corrupted or reordered. See docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.harness import ServerProcess  # noqa: E402
from tests.faults.workload import run_workload  # noqa: E402


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="samizdat-faults-") as tmp:
        root = Path(tmp)
        server = ServerProcess(root / "server", extra_args=("--token-rate", "1000"))
        server.start()
        try:
            out = await run_workload(
                server,
                root,
                messages=args.messages,
                kills=args.kills,
                pairs=args.pairs,
                seed=args.seed,
                settle=args.settle,
                progress=(lambda line: print(line, file=sys.stderr)) if args.verbose else None,
            )
        finally:
            server.stop()
    print(out.line())
    print(out.detail())
    bad = out.lost or out.duplicated or out.corrupted or out.unexpected or out.order_violations
    return 1 if bad or out.delivered != out.sent else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--settle", type=float, default=120.0, help="seconds to wait for stragglers"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    raise SystemExit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
