from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import ServerProcess
from tests.e2e.raw import RawConnection


@pytest.fixture(autouse=True)
async def _close_raw_connections() -> AsyncIterator[None]:
    yield
    while RawConnection.opened:
        await RawConnection.opened.pop().close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path / "server")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
