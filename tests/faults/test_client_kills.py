"""A recipient killed with SIGKILL mid-receive loses nothing and shows nothing twice."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

from samizdat.client.app import Client
from tests.e2e.harness import PASSPHRASE, ServerProcess
from tests.faults.workload import stamp


def _listener(home: Path, log: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SAMIZDAT_HOME=str(home), SAMIZDAT_PASSPHRASE=PASSPHRASE)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "samizdat", "listen", "--json"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


async def test_listener_sigkilled_six_times_resumes_without_loss(
    server: ServerProcess, tmp_path: Path
) -> None:
    alice = await Client.create(tmp_path / "alice", PASSPHRASE, server.link, "alice")
    bob = await Client.create(tmp_path / "bob", PASSPHRASE, server.link, "bob")
    await bob.add_contact(await alice.invite(), "alice")
    await bob.send("alice", "hello")
    async with contextlib.aclosing(alice.listen(count=1, timeout=30)) as first:
        async for message in first:
            await alice.accept(message.sender)
    await alice.close()

    rng = random.Random(4)
    count = 150
    log = tmp_path / "listener.log"
    proc = _listener(tmp_path / "alice", log)
    sending_done = asyncio.Event()

    async def killer() -> int:
        nonlocal proc
        kills = 0
        while not sending_done.is_set() or kills < 6:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
            kills += 1
            proc = _listener(tmp_path / "alice", log)
        return kills

    try:
        kill_task = asyncio.create_task(killer())
        for seq in range(count):
            await bob.send("alice", stamp(0, seq))
            await asyncio.sleep(0.01)
        sending_done.set()
        kills = await kill_task
        # The last listener drains what is left; then stop it and look at Alice's history.
        await asyncio.sleep(8)
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, 10)
        await bob.close()
    alice = await Client.open(tmp_path / "alice", PASSPHRASE)
    try:
        texts = [item.text for item in alice.history("bob") if item.direction == "in"]
    finally:
        await alice.close()
    assert kills >= 6
    assert texts == ["hello"] + [stamp(0, seq) for seq in range(count)]
