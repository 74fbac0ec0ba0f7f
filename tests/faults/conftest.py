from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    # A high per-token rate: these tests measure crashes, not rate limits (tests/abuse/).
    proc = ServerProcess(tmp_path / "server", extra_args=("--token-rate", "1000"))
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
