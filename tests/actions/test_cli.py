"""``samizdat reply|react|edit|delete|read|timer|settings`` and ``history``, as processes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.e2e.harness import ServerProcess, run_cli


def _history(home: Path, peer: str) -> dict[str, dict[str, Any]]:
    rows = json.loads(run_cli(home, "history", peer, "--json").stdout)
    return {row["id"]: row for row in rows}


def test_actions_from_the_command_line(server: ServerProcess, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run_cli(alice, "init", "--server", server.link, "--name", "alice")
    run_cli(bob, "init", "--server", server.link, "--name", "bob")
    run_cli(
        bob, "add", json.loads(run_cli(alice, "invite", "--json").stdout)["link"], "--name", "alice"
    )
    first = run_cli(bob, "send", "alice", "first words").stdout.strip()
    run_cli(alice, "listen", "--count", "1", "--timeout", "30")
    run_cli(alice, "accept", "bob")
    run_cli(alice, "settings", "read-receipts", "off")
    assert run_cli(alice, "settings", "read-receipts").stdout.strip() == "read-receipts: off"
    assert run_cli(alice, "settings", "delivery-receipts").stdout.strip() == (
        "delivery-receipts: on"
    )
    answer = run_cli(alice, "reply", "bob", first, "an answer").stdout.strip()
    run_cli(alice, "react", "bob", first, "👍")
    run_cli(bob, "listen", "--timeout", "1.5")
    run_cli(bob, "edit", "alice", first, "better words")
    second = run_cli(bob, "send", "alice", "second").stdout.strip()
    run_cli(alice, "listen", "--timeout", "1.5")
    run_cli(alice, "read", "bob")  # read receipts are off: nothing is sent

    mine = _history(bob, "alice")
    assert mine[first]["text"] == "better words" and mine[first]["edits"] == ["first words"]
    assert mine[first]["reactions"] == {"alice": "👍"}
    # No receipt goes to a message request; after accepting, delivery but (off) no read.
    assert mine[first]["delivered_to"] == []
    run_cli(bob, "listen", "--timeout", "1.5")
    mine = _history(bob, "alice")
    assert mine[second]["delivered_to"] == ["alice"] and mine[second]["read_by"] == []
    assert mine[answer]["reply_to"] == first
    theirs = _history(alice, "bob")
    assert theirs[first]["text"] == "better words" and theirs[first]["edited"] is True
    assert theirs[first]["edits"] == []

    run_cli(alice, "delete", "bob", answer)
    assert json.loads(run_cli(bob, "timer", "alice", "5", "--json").stdout) == {"timer": 5}
    run_cli(bob, "listen", "--timeout", "1.5")
    assert _history(bob, "alice")[answer]["deleted"] is True
    shown = run_cli(bob, "history", "alice").stdout
    assert "(this message was deleted)" in shown and "(edited)" in shown and "👍 alice" in shown
    assert "disappear 5 seconds" in shown
    run_cli(alice, "listen", "--timeout", "1.5")
    assert "disappearing messages: 5 seconds" in run_cli(alice, "timer", "bob").stdout
