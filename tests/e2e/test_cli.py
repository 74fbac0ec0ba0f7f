"""The scripting interface of issue 2, driven as a user would: separate processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import PASSPHRASE, ServerProcess, run_cli


def test_two_people_talk_through_the_cli(server: ServerProcess, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run_cli(alice, "init", "--server", server.link, "--name", "Alice")
    run_cli(bob, "init", "--server", server.link, "--name", "Bob")
    link = json.loads(run_cli(alice, "invite", "--json").stdout)["link"]
    assert link.startswith("samizdat:invite/")
    run_cli(bob, "add", link, "--name", "alice")
    run_cli(bob, "send", "alice", "hello from bob")

    out = run_cli(alice, "listen", "--json", "--count", "1", "--timeout", "30").stdout
    [line] = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert line["text"] == "hello from bob" and line["request"] is True
    assert {"from", "text", "id", "sent_at"} <= line.keys()
    requester = line["from"]
    run_cli(alice, "accept", requester)
    run_cli(alice, "send", requester, "hi bob, accepted")

    out = run_cli(bob, "listen", "--json", "--count", "1", "--timeout", "30").stdout
    [reply] = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert (reply["from"], reply["text"], reply["request"]) == ("alice", "hi bob, accepted", False)

    history = json.loads(run_cli(bob, "history", "alice", "--json").stdout)
    assert [h["text"] for h in history] == ["hello from bob", "hi bob, accepted"]

    number_bob = run_cli(bob, "safety-number", "alice").stdout.split()
    number_alice = run_cli(alice, "safety-number", requester).stdout.split()
    digits = "".join(x for x in number_bob if x.isdigit())
    assert len(digits) == 60 and number_bob == number_alice


def test_listen_in_one_process_while_sending_from_another(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The same home used by a long-running listen and by sends, as people do."""
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run_cli(alice, "init", "--server", server.link, "--name", "Alice")
    run_cli(bob, "init", "--server", server.link, "--name", "Bob")
    run_cli(
        bob, "add", json.loads(run_cli(alice, "invite", "--json").stdout)["link"], "--name", "alice"
    )
    run_cli(bob, "send", "alice", "first")
    env = dict(os.environ, SAMIZDAT_HOME=str(alice), SAMIZDAT_PASSPHRASE=PASSPHRASE)
    listener = subprocess.Popen(
        [sys.executable, "-m", "samizdat", "listen", "--json", "--count", "11", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for i in range(10):
            run_cli(bob, "send", "alice", f"m{i}")
            if i == 4:  # Alice answers from a second process while her listen runs.
                run_cli(alice, "accept", "Bob")
                run_cli(alice, "send", "Bob", "answer while listening")
        out, err = listener.communicate(timeout=90)
    finally:
        listener.kill()
    assert listener.returncode == 0, err
    texts = [json.loads(x)["text"] for x in out.splitlines() if x.strip()]
    assert texts == ["first"] + [f"m{i}" for i in range(10)]
    got = run_cli(bob, "listen", "--json", "--count", "1", "--timeout", "30").stdout
    assert json.loads(got.splitlines()[0])["text"] == "answer while listening"


def test_send_to_unknown_contact_fails_cleanly(server: ServerProcess, tmp_path: Path) -> None:
    home = tmp_path / "carol"
    run_cli(home, "init", "--server", server.link, "--name", "Carol")
    result = run_cli(home, "send", "nobody", "hello", check=False)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and result.stderr.strip()


def test_wrong_passphrase_is_refused(server: ServerProcess, tmp_path: Path) -> None:
    home = tmp_path / "dave"
    run_cli(home, "init", "--server", server.link, "--name", "Dave")
    env = dict(os.environ, SAMIZDAT_HOME=str(home), SAMIZDAT_PASSPHRASE="not the passphrase")
    result = subprocess.run(
        [sys.executable, "-m", "samizdat", "history", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0 and "Traceback" not in result.stderr
