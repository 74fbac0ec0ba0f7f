"""The demo command end to end (a real server subprocess, two clients, a disk scan)."""

from __future__ import annotations

import subprocess
import sys


def test_demo_runs_and_shows_only_ciphertext() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "samizdat", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "what the server stored" in result.stdout
    assert "only ciphertext" in result.stdout
    assert "Traceback" not in result.stderr


def test_usage_error_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "samizdat", "no-such-command"], capture_output=True, text=True
    )
    assert result.returncode == 2
