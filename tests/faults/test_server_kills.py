"""1:1 messaging survives SIGKILLs of the server: nothing lost, doubled, corrupted or reordered."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.harness import ServerProcess
from tests.faults.workload import classify, run_workload, stamp


async def test_300_messages_through_5_server_kills(server: ServerProcess, tmp_path: Path) -> None:
    out = await run_workload(server, tmp_path, messages=300, kills=5, pairs=20, seed=9)
    assert out.kills == 5
    assert out.line() == "sent=300 delivered=300 lost=0 duplicated=0 corrupted=0", out.detail()
    assert (out.unexpected, out.order_violations) == (0, 0), out.detail()


def test_the_checker_sees_each_kind_of_failure() -> None:
    # The checker itself must be able to fail: feed it a lost, a doubled, a corrupted,
    # an out-of-order and an unexpected message.
    attempted = {(0, 0), (0, 1), (0, 2), (1, 0)}
    received = [
        [stamp(0, 1), stamp(0, 0), stamp(0, 0), stamp(0, 2).replace("payload", "paYload")],
        [stamp(5, 5)],
    ]
    out = classify(attempted, attempted, received)
    assert out.line() == "sent=4 delivered=2 lost=2 duplicated=1 corrupted=1"
    assert (out.order_violations, out.unexpected) == (1, 1)
