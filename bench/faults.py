"""Fault injection for 1:1 messaging: SIGKILL the server K times while N messages flow.

    .venv/bin/python bench/faults.py --messages 10000 --kills 50

20 senders and 20 recipients (real ``Client`` objects in this process) use one real
``samizdat server`` process, killed with SIGKILL at random moments and restarted on the
same port and data folder. Prints ``sent= delivered= lost= duplicated= corrupted=`` as
Jepsen's RabbitMQ checker classifies them, then order violations per sender and timings.
Exits 1 if anything was lost, doubled, corrupted or reordered. See docs/reliability.md.

    .venv/bin/python bench/faults.py --nodes 2 --messages 10000 --kills 50

Multi-node: two nodes on PostgreSQL (127.0.0.1:5432) and Redis (127.0.0.1:6379), one
identity, both endpoints in the descriptor; pairs' home links alternate between them.
The faults take turns: SIGKILL node A, SIGKILL node B, "restart PostgreSQL". The last
is simulated (the machine's PostgreSQL is shared): the nodes reach it through a loopback
TCP proxy that aborts every connection and refuses new ones for ``--pg-downtime``
seconds (tests/faults/cluster.py). On a machine of your own, restart it for real:

    .venv/bin/python bench/faults.py --nodes 2 --messages 2000 --kills 12 \
        --pg-restart-command "pg_ctlcluster 15 main restart -m immediate"

(``-m immediate`` stops PostgreSQL without a checkpoint, so it starts with crash recovery;
nothing else may be using that PostgreSQL meanwhile.)
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.e2e.harness import ServerProcess  # noqa: E402
from tests.faults.cluster import two_nodes  # noqa: E402
from tests.faults.workload import Outcome, run_workload  # noqa: E402


async def _two_nodes(args: argparse.Namespace, root: Path) -> Outcome:
    async with two_nodes(root, args.seed) as cluster:
        cluster.pg_downtime = args.pg_downtime
        if args.pg_restart_command:
            cluster.pg_restart_command = shlex.split(args.pg_restart_command)
        out = await run_workload(
            cluster.a,
            root,
            messages=args.messages,
            kills=args.kills,
            pairs=args.pairs,
            seed=args.seed,
            settle=args.settle,
            progress=(lambda line: print(line, file=sys.stderr)) if args.verbose else None,
            inject=cluster.inject,
            links=cluster.links,
        )
        out.notes.append(
            f"postgres_connections_cut={cluster.proxy.cut_connections}"
            f" postgres_connections={cluster.proxy.connections}"
        )
        return out


async def _main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="samizdat-faults-") as tmp:
        root = Path(tmp)
        if args.nodes == 2:
            out = await _two_nodes(args, root)
            print(out.line())
            print(out.detail(), *out.notes)
            return _exit_code(out)
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
    return _exit_code(out)


def _exit_code(out: Outcome) -> int:
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
    parser.add_argument("--nodes", type=int, choices=(1, 2), default=1)
    parser.add_argument(
        "--pg-downtime", type=float, default=1.0, help="seconds PostgreSQL is unreachable"
    )
    parser.add_argument(
        "--pg-restart-command",
        default="",
        help="restart the real PostgreSQL with this command instead of cutting the proxy",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    raise SystemExit(asyncio.run(_main(parser.parse_args())))


if __name__ == "__main__":
    main()
