"""``samizdat ui`` stopped by SIGTERM (a service manager, a logout) closes cleanly: it
exits 0 and leaves no private file folder behind (no Chromium needed)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from .conftest import UiProc


async def test_sigterm_closes_and_removes_the_file_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "tmp"
    private.mkdir()
    monkeypatch.setenv("TMPDIR", str(private))  # the UI's tempfile folder goes here
    ui = await UiProc(tmp_path / "home").start()
    try:
        assert [n for n in os.listdir(private) if n.startswith("samizdat-ui-")]
        assert ui.proc is not None
        ui.proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(ui.proc.wait(), 20) == 0
    finally:
        await ui.stop()
    assert os.listdir(private) == []
