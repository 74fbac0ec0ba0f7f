"""``samizdat send NAME --file PATH``, ``history`` and ``samizdat download ID`` as a user
runs them: separate processes against a server process."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from tests.e2e.harness import ServerProcess, run_cli


def test_send_a_file_and_download_it(server: ServerProcess, tmp_path: Path) -> None:
    alice, bob = tmp_path / "alice", tmp_path / "bob"
    run_cli(alice, "init", "--server", server.link, "--name", "Alice")
    run_cli(bob, "init", "--server", server.link, "--name", "Bob")
    run_cli(
        bob, "add", json.loads(run_cli(alice, "invite", "--json").stdout)["link"], "--name", "alice"
    )
    data = os.urandom(300_000)
    (tmp_path / "notes.pdf").write_bytes(data)
    msg_id = run_cli(bob, "send", "alice", "the notes", "--file", str(tmp_path / "notes.pdf"))
    msg_id_text = msg_id.stdout.strip()

    out = run_cli(alice, "listen", "--json", "--count", "1", "--timeout", "30").stdout
    [line] = [json.loads(x) for x in out.splitlines() if x.strip()]
    assert (line["id"], line["text"]) == (msg_id_text, "the notes")
    assert line["attachment"] == {
        "name": "notes.pdf", "size": 300_000, "media_type": "application/pdf",
        "expires_at": line["attachment"]["expires_at"],
    }  # fmt: skip
    history = json.loads(run_cli(alice, "history", line["from"], "--json").stdout)
    assert history[-1]["attachment"]["name"] == "notes.pdf"
    shown = run_cli(alice, "history", line["from"]).stdout
    assert "notes.pdf" in shown and msg_id_text[:8] in shown

    # The 8 digits history shows are enough.
    got = run_cli(alice, "download", msg_id_text[:8], "--out", str(tmp_path / "got.pdf")).stdout
    assert Path(got.strip()) == tmp_path / "got.pdf"
    assert (
        hashlib.sha256((tmp_path / "got.pdf").read_bytes()).digest()
        == hashlib.sha256(data).digest()
    )
    fail = run_cli(alice, "download", "00" * 16, check=False)
    assert fail.returncode == 1 and "no attachment" in fail.stderr
    usage = run_cli(bob, "send", "alice", check=False)
    assert usage.returncode == 2
