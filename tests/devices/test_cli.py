"""The ``devices``, ``group``, ``verify`` and ``trust`` commands, as real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.e2e.harness import PASSPHRASE, ServerProcess, run_cli


def _init(home: Path, server: ServerProcess, name: str) -> None:
    run_cli(home, "init", "--server", server.link, "--name", name)


def _befriend(a: Path, a_name: str, b: Path, b_name: str) -> None:
    link = json.loads(run_cli(a, "invite", "--json").stdout)["link"]
    run_cli(b, "add", link, "--name", a_name)
    run_cli(b, "send", a_name, "hello")
    run_cli(a, "listen", "--count", "1", "--timeout", "10")
    run_cli(a, "accept", b_name)


def test_link_join_list_revoke_and_a_group_from_the_command_line(
    tmp_path: Path, server: ServerProcess
) -> None:
    alice, laptop, bob = tmp_path / "alice", tmp_path / "laptop", tmp_path / "bob"
    _init(alice, server, "alice")
    _init(bob, server, "bob")
    _befriend(alice, "alice", bob, "bob")
    env = dict(os.environ, SAMIZDAT_HOME=str(alice), SAMIZDAT_PASSPHRASE=PASSPHRASE)
    linking = subprocess.Popen(
        [sys.executable, "-m", "samizdat", "devices", "link", "--yes", "--json", "--timeout", "60"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert linking.stdout is not None
        code = json.loads(linking.stdout.readline())["code"]
        assert code.startswith("samizdat:link/")
        joined = run_cli(laptop, "devices", "join", code, "--yes", "--json")
        new_side = [json.loads(line) for line in joined.stdout.splitlines()]
        out, err = linking.communicate(timeout=60)
        old_side = [json.loads(line) for line in out.splitlines()]
        assert linking.returncode == 0, err
    finally:
        if linking.poll() is None:
            linking.kill()
            linking.wait()
    # Both devices showed the same short code.
    assert old_side[0]["sas"] == new_side[0]["sas"]
    listed = json.loads(run_cli(alice, "devices", "list", "--json").stdout)
    assert len(listed) == 2
    assert json.loads(run_cli(laptop, "devices", "list", "--json").stdout) == [
        {"id": d["id"], "current": not d["current"]} for d in listed
    ]
    run_cli(bob, "listen", "--timeout", "2")  # picks up alice's new device list
    run_cli(bob, "group", "create", "pals", "alice")
    run_cli(alice, "listen", "--timeout", "2")
    run_cli(laptop, "listen", "--timeout", "2")
    members = json.loads(run_cli(laptop, "group", "members", "pals", "--json").stdout)
    assert sorted((m["name"], m["admin"]) for m in members) == [("alice", False), ("bob", True)]
    run_cli(bob, "send", "--group", "pals", "hello pals")
    for home in (alice, laptop):
        got = json.loads(
            run_cli(home, "listen", "--json", "--count", "1", "--timeout", "10").stdout
        )
        assert (got["group"], got["from"], got["text"]) == ("pals", "bob", "hello pals")
    run_cli(laptop, "send", "--group", "pals", "from the laptop")
    run_cli(alice, "listen", "--timeout", "2")
    history = json.loads(run_cli(alice, "history", "--group", "pals", "--json").stdout)
    assert [(h["direction"], h["text"]) for h in history] == [
        ("in", "hello pals"),
        ("out", "from the laptop"),
    ]
    run_cli(bob, "group", "admin", "pals", "alice")
    run_cli(alice, "listen", "--timeout", "2")
    members = json.loads(run_cli(alice, "group", "members", "pals", "--json").stdout)
    assert all(m["admin"] for m in members)
    run_cli(bob, "group", "rename", "pals", "friends")
    run_cli(alice, "listen", "--timeout", "2")
    assert "friends" in run_cli(alice, "group", "list").stdout
    # Revoking the laptop from the phone.
    revoked = run_cli(
        alice, "devices", "revoke", [d["id"] for d in listed if not d["current"]][0][:12]
    )
    assert revoked.stdout.startswith("revoked")
    assert len(json.loads(run_cli(alice, "devices", "list", "--json").stdout)) == 1
    # Safety number with a QR code, manual verification and trust.
    shown = run_cli(alice, "safety-number", "bob", "--qr").stdout
    assert len([c for c in shown.splitlines()[0] if c.isdigit()]) == 20
    assert run_cli(alice, "verify", "bob", "--manual").returncode == 0
    assert run_cli(alice, "trust", "bob").returncode == 0
