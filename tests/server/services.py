"""Where the tests find PostgreSQL and Redis (services CI starts; their absence fails tests)."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from samizdat.server.store.postgres import PostgresStore

__all__ = ["PG_DSN", "REDIS_URL", "drop_pg_schema", "fresh_schema", "pg_store"]

PG_DSN = os.environ.get("SAMIZDAT_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("SAMIZDAT_TEST_REDIS", "redis://127.0.0.1:6379/0")


async def drop_pg_schema(schema: str) -> None:
    """Remove a test's schema and everything in it."""
    conn = await asyncpg.connect(PG_DSN)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def fresh_schema() -> str:
    """A schema name no other test uses."""
    return f"t_{secrets.token_hex(8)}"


@asynccontextmanager
async def pg_store(schema: str, **options: Any) -> AsyncIterator[PostgresStore]:
    """An open PostgresStore in ``schema`` (made by its migrations), dropped afterwards."""
    store = PostgresStore(PG_DSN, schema=schema, **{"pool_size": 4, **options})
    await store.open()
    try:
        yield store
    finally:
        await store.close()
        await drop_pg_schema(schema)
