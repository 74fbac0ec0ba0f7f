from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.server.store.base import Store
from samizdat.server.store.sqlite import SqliteStore

StoreFactory = Callable[..., Awaitable[Store]]

# Every store implementation runs the same conformance suite; add "postgresql" here.
STORE_KINDS = ["sqlite"]


@pytest.fixture(params=STORE_KINDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens a store on the same database each call (to test reopening)."""
    opened: list[Store] = []

    async def factory(**options: int) -> Store:
        assert request.param == "sqlite"
        store = SqliteStore(tmp_path / "server.db", **options)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start(ServerConfig(data_dir=tmp_path / "srv", print_link=False))
    yield running
    await running.stop()


@pytest.fixture
async def small_server(tmp_path: Path) -> AsyncIterator[RunningServer]:
    running = await start(
        ServerConfig(data_dir=tmp_path / "srv", max_mailbox_entries=3, print_link=False)
    )
    yield running
    await running.stop()
