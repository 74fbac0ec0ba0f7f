from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from samizdat.server.app import RunningServer, ServerConfig, start
from samizdat.server.store.base import Store
from samizdat.server.store.postgres import PostgresStore
from samizdat.server.store.sqlite import SqliteStore

from .services import PG_DSN, drop_pg_schema

StoreFactory = Callable[..., Awaitable[Store]]

# Every store implementation runs the same conformance suite.
STORE_KINDS = ["sqlite", "postgresql"]


@pytest.fixture(params=STORE_KINDS)
async def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[StoreFactory]:
    """Opens a store on the same database each call (to test reopening).

    PostgreSQL must be running (PG_DSN): a missing server fails the test, never skips it.
    Each test gets its own schema, dropped afterwards, so runs do not collide.
    """
    opened: list[Store] = []
    schema = f"t_{secrets.token_hex(8)}"

    async def factory(**options: int) -> Store:
        store: Store
        if request.param == "sqlite":
            store = SqliteStore(tmp_path / "server.db", **options)
        else:
            store = PostgresStore(PG_DSN, schema=schema, pool_size=4, **options)
        await store.open()
        opened.append(store)
        return store

    yield factory
    for store in opened:
        await store.close()
    if request.param == "postgresql" and opened:
        await drop_pg_schema(schema)


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
